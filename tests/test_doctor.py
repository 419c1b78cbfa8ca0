"""`python train.py --doctor`: versions, GPUs and their support by this torch build, one training step."""
import torch

from src.app import doctor

CU92_ARCHS = ["sm_37", "sm_50", "sm_60", "sm_61", "sm_70", "sm_75"]  # what torch 1.7.1+cu92 was built for


def test_doctor_on_this_host_gives_a_verdict(project):
    res = project.ok("--doctor")
    out = res.stdout
    assert "torch       %s" % torch.__version__ in out
    assert "check       cpu: one forward/backward step" in out
    assert "verdict     OK" in out
    if not torch.cuda.is_available():
        assert "gpu         none visible" in out
    assert not (project.root / "models" / "latest").exists()  # it trains nothing and saves nothing


def test_gpu_support_decisions():
    assert doctor.gpu_support((7, 5), CU92_ARCHS)[0]
    assert doctor.gpu_support((6, 1), CU92_ARCHS)[0]
    ok, how = doctor.gpu_support((9, 0), CU92_ARCHS)  # H100 / H200 under the CUDA 9.2 build
    assert not ok and "no kernels for sm_90" in how
    assert not doctor.gpu_support((8, 0), CU92_ARCHS)[0]  # A100
    assert doctor.gpu_support((8, 6), ["sm_80", "sm_90"])[0]  # same major, newer minor: binary compatible
    assert doctor.gpu_support((8, 0), ["sm_70", "compute_75"]) == (True, "via PTX JIT (slow first start)")
    assert doctor.gpu_support((9, 0), None)[0]


def test_unsupported_gpu_advice_names_the_stack_to_switch_to():
    advice = doctor.unsupported(0, "NVIDIA H200", (9, 0))
    assert "cannot run on gpu 0 (NVIDIA H200, sm_90)" in advice and "./setup.sh --stack cu12" in advice
