"""reslab: fast, trustworthy image-classification studies in PyTorch."""
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .datasets import list_datasets, load_dataset
from .errors import ReslabError
from .evaluate import evaluate
from .loader import TensorLoader, stratified_split
from .models import build_model, list_models, register_model
from .run import run_training
from .train import EarlyStopping, train_model
from .version import __version__

__all__ = ["EarlyStopping", "ReslabError", "TensorLoader", "TrainConfig", "build_model", "evaluate",
           "list_datasets", "list_models", "load_checkpoint", "load_dataset", "register_model", "run_training",
           "stratified_split", "train_model", "__version__"]
