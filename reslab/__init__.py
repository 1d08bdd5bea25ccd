"""reslab: fast, trustworthy image-classification studies in PyTorch."""
from .checkpoint import load_checkpoint
from .config import TrainConfig, TransferSettings
from .datasets import Dataset, list_datasets, load_dataset
from .early_stopping import EarlyStopping, StopReason
from .errors import ConfigError, DataError, ReslabError
from .evaluate import evaluate
from .loader import Loaders, TensorLoader, make_loaders, stratified_split
from .models import build_model, list_models, register_model
from .run import run_training
from .train import History, train_model
from .version import __version__

__all__ = ["ConfigError", "DataError", "Dataset", "EarlyStopping", "History", "Loaders", "ReslabError", "StopReason",
           "TensorLoader", "TrainConfig", "TransferSettings", "__version__", "build_model", "evaluate",
           "list_datasets", "list_models", "load_checkpoint", "load_dataset", "make_loaders", "register_model",
           "run_training", "stratified_split", "train_model"]
