"""resolve_device: a device that is asked for but absent is a ConfigError naming it."""

from __future__ import annotations

import pytest
import torch

from cliprnn import CaR, CaRConfig
from cliprnn.clip_backend import resolve_device
from cliprnn.errors import ConfigError

_MPS = getattr(torch.backends, "mps", None)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


def test_cpu_and_auto_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available() and not (_MPS and _MPS.is_available()):
        assert resolve_device("auto") == torch.device("cpu")


def test_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'.*CUDA is not available"):
        resolve_device(name)


@pytest.mark.skipif(bool(_MPS and _MPS.is_available()), reason="MPS is available here")
def test_mps_without_mps_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'mps'.*MPS is not available"):
        resolve_device("mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_devices_is_a_config_error() -> None:
    index = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"only {index} CUDA"):
        resolve_device(f"cuda:{index}")


@NO_CUDA
def test_car_on_an_absent_cuda_fails_before_loading_a_model(tiny_clip_dir) -> None:
    config = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cuda",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="'cuda'"):
        CaR(config).proposal_backend  # noqa: B018
