"""tpuserve.model: checkpoints in, a Flax NNX transformer out."""

from tpuserve.model.config import ModelConfig
from tpuserve.model.errors import ModelLoadError
from tpuserve.model.layers.linear import with_out_major_kernels
from tpuserve.model.loading import LoadedModel, load_model
from tpuserve.model.resolve import Checkpoint, CheckpointKind, resolve_checkpoint
from tpuserve.model.transformer import Transformer

__all__ = [
    "Checkpoint",
    "CheckpointKind",
    "LoadedModel",
    "ModelConfig",
    "ModelLoadError",
    "Transformer",
    "load_model",
    "resolve_checkpoint",
    "with_out_major_kernels",
]

if __name__ != "tpuserve.model":  # run from the checkout root, the folder is also reachable as a bare name
    raise ImportError(f"{__name__!r} is this checkout's model/ folder; import it as tpuserve.model")
