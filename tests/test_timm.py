"""timm models (--model timm:NAME) and their pretrained weights (--pretrained [PATH]): any architecture by name with
the data's classes and channels; weights from local files (safetensors and torch formats, with and without a
classifier, another class count, another channel count, a ViT at another image size) and from the Hugging Face
hub's cache, or one line where there are none; the weights' input settings and fine-tuning recipe; exact resume
after kill -9 and a stop; --predict agrees with --evaluate. Skipped where timm is not installed (the torch 1.7.1
stack), where one test checks the one-line refusal instead. No test reaches the internet."""
import csv
import json
import signal
import socket
from types import SimpleNamespace

import pytest
import torch

from conftest import Project, finish_run, load, same_weights, write_images

try:
    import timm
    from safetensors.torch import save_file
except Exception:  # not installed, or a torchvision of another torch: the refusal test below runs instead
    timm = None

needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed here (the torch 1.7.1 stack)")
PLAIN = ["--progress", "plain", "--threads", "1"]
HUB_REPO = "timm/resnet18.a1_in1k"  # timm's default weights of resnet18 (its pretrained config's hf_hub_id)


def _cfg(model, **values):
    base = dict(model=model, dataset="folder:pets", dropout=0.0, drop_path=0.0, download_timeout=5.0, download=False,
                pretrained=None,
                lr=1.0, lr_groups=(), layer_decay=0.0, freeze=(), unfreeze_at=0, freeze_backbone=0)
    base.update(values)
    return SimpleNamespace(**base)


def _build(model, shape=(3, 32, 32), classes=4, **values):
    from src import models
    return models.build(_cfg(model, **values), shape, classes)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_timm
@pytest.mark.parametrize("name,shape", [("resnet18", (3, 32, 32)), ("convnext_atto", (1, 32, 32)),
                                        ("vit_tiny_patch16_224", (3, 32, 32)), ("efficientnet_b0", (3, 24, 24))])
def test_any_timm_architecture_builds_for_the_data_s_classes_channels_and_size(name, shape):
    model = _build("timm:" + name, shape, 5)
    out = model(torch.zeros((2,) + shape))
    assert out.shape == (2, 5)


@needs_timm
def test_an_unknown_architecture_is_one_line_naming_the_closest_ones(project):
    res = project.run("--dataset", "synthetic", "--synthetic-shape", "3,16,16", "--model", "timm:resnet19",
                      "--max-steps", "1", *PLAIN)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "timm:resnet19" in res.stderr and "resnet18" in res.stderr


@needs_timm
def test_pretrained_is_refused_for_a_model_without_pretrained_weights_and_beside_init_from(project):
    res = project.run("--dataset", "synthetic", "--model", "cnn", "--pretrained", "x.safetensors", *PLAIN)
    assert res.returncode == 2 and "timm:NAME" in res.stderr and res.stderr.count("\n") == 1, res.stderr


@needs_timm
@pytest.mark.parametrize("fmt", ["safetensors", "pth-container", "bin-no-head"])
def test_a_weights_file_loads_in_each_format_and_the_other_head_starts_fresh(tmp_path, fmt):
    from src.app.run import describe_init, pretrained_weights
    source = timm.create_model("resnet18", num_classes=10)
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(weights, str(path))
    elif fmt == "pth-container":  # a training script's checkpoint: {"state_dict": ...} of a DDP model
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}, "epoch": 3}, str(path))
    else:  # a backbone saved without its classifier (num_classes=0)
        path = tmp_path / "w.bin"
        torch.save({k: v for k, v in weights.items() if not k.startswith("fc.")}, str(path))
    cfg = _cfg("timm:resnet18", pretrained=str(path))
    model = _build("timm:resnet18", classes=4)
    record = pretrained_weights(model, cfg)
    state = model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights if not k.startswith("fc."))
    assert sorted(f.split(" ")[0] for f in record["fresh"]) == ["fc.bias", "fc.weight"]
    assert len(record["loaded"]) == len(state) - 2
    assert describe_init(record).startswith("--pretrained %s: loaded %d of the model's %d tensors; fresh: fc." % (
        path, len(state) - 2, len(state)))


@needs_timm
def test_weights_adapt_to_grey_images_and_a_vit_to_another_image_size(tmp_path):
    from src.app.run import pretrained_weights
    rgb = timm.create_model("resnet18")
    save_file(rgb.state_dict(), str(tmp_path / "r.safetensors"))
    grey = _build("timm:resnet18", (1, 32, 32), 1000)
    record = pretrained_weights(grey, _cfg("timm:resnet18", pretrained=str(tmp_path / "r.safetensors")))
    assert not record["fresh"]  # the first convolution summed over RGB (timm's adapt_input_conv), the head kept
    assert torch.allclose(grey.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    vit = timm.create_model("vit_tiny_patch16_224")  # position embeddings for 14 x 14 patches
    save_file(vit.state_dict(), str(tmp_path / "v.safetensors"))
    small = _build("timm:vit_tiny_patch16_224", (3, 32, 32), 3)  # 2 x 2 patches
    record = pretrained_weights(small, _cfg("timm:vit_tiny_patch16_224", pretrained=str(tmp_path / "v.safetensors")))
    assert sorted(f.split(" ")[0] for f in record["fresh"]) == ["head.bias", "head.weight"]
    assert torch.equal(small.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert small.pos_embed.shape[1] == 1 + 4


@needs_timm
def test_weights_of_another_architecture_or_a_file_that_runs_code_are_one_line(tmp_path):
    from src.app.run import pretrained_weights
    from src.runtime.errors import UsageError
    save_file(timm.create_model("convnext_atto").state_dict(), str(tmp_path / "c.safetensors"))
    with pytest.raises(UsageError, match="give weights of this architecture|start from the weights"):
        pretrained_weights(_build("timm:resnet18"), _cfg("timm:resnet18", pretrained=str(tmp_path / "c.safetensors")))

    class Payload(object):
        def __reduce__(self):
            return (print, ("this ran",))
    torch.save({"fc.weight": Payload()}, str(tmp_path / "evil.pth"))
    with pytest.raises(UsageError, match="not a weights file that can be read safely"):
        pretrained_weights(_build("timm:resnet18"), _cfg("timm:resnet18", pretrained=str(tmp_path / "evil.pth")))
    with pytest.raises(UsageError, match="no such file"):
        pretrained_weights(_build("timm:resnet18"), _cfg("timm:resnet18", pretrained=str(tmp_path / "none.pth")))


def _hub_cache(home, weights):
    """HF_HOME holding weights as huggingface_hub's cache does after a download of HUB_REPO's model.safetensors."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(weights, str(repo / "snapshots" / commit / "model.safetensors"))


@needs_timm
def test_the_hub_s_weights_come_from_its_cache_offline_and_without_them_one_line_says_what_to_fetch(tmp_path):
    project = Project(tmp_path)
    write_images(project.root / "data" / "pets", 8)
    weights = timm.create_model("resnet18").state_dict()
    args = ["--dataset", "folder:%s" % (project.root / "data" / "pets"), "--model", "timm:resnet18", "--pretrained",
            "--image-size", "16", "--max-steps", "1", "--download-timeout", "5"] + PLAIN
    unreachable = "http://127.0.0.1:%d" % _free_port()  # nothing listens: no network, and never the internet
    project.env.update(HF_HOME=str(tmp_path / "empty"), HF_ENDPOINT=unreachable, HF_HUB_DISABLE_TELEMETRY="1")
    res = project.run(*args, "--run-name", "none")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "hf download %s model.safetensors" % HUB_REPO in res.stderr and "--pretrained PATH" in res.stderr
    assert not project.latest("none").exists()
    _hub_cache(tmp_path / "home", weights)
    project.env.update(HF_HOME=str(tmp_path / "home"))
    res = project.ok(*args, "--run-name", "cached", "--no-download")
    assert "--pretrained %s (" % HUB_REPO in res.stderr and "fresh: fc.weight" in res.stderr
    config = load(project.latest("cached"))["config"]
    assert (config["interpolation"], config["crop_pct"], config["mean"]) == ("bicubic", 0.95, "0.485,0.456,0.406")
    assert load(project.latest("cached"))["init"]["flag"] == "--pretrained"


class _Hub(object):
    """A web server on 127.0.0.1 answering as the Hugging Face hub does for a file download (HEAD for the commit,
    ETag and size; GET for the bytes) of {repo: {filename: bytes}}; it counts the GETs."""

    def __init__(self, files):
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        hub = self
        self.gets = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                for repo, named in files.items():
                    for filename, blob in named.items():
                        if self.path.split("?")[0] == "/%s/resolve/main/%s" % (repo, filename):
                            return blob
                return None

            def _head(self, blob):
                if blob is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                self.send_response(200)
                self.send_header("X-Repo-Commit", "89abcdef0123456789abcdef0123456789abcdef")
                self.send_header("ETag", '"%s"' % hashlib.sha256(blob).hexdigest())
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                return True

            def do_HEAD(self):
                self._head(self._file())

            def do_GET(self):
                blob = self._file()
                if self._head(blob):
                    hub.gets.append(self.path)
                    self.wfile.write(blob)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@needs_timm
def test_the_hub_s_weights_download_once_into_its_cache_and_a_second_run_reads_them_there(tmp_path):
    project = Project(tmp_path)
    write_images(project.root / "data" / "pets", 8)
    weights = timm.create_model("resnet18").state_dict()
    save_file(weights, str(tmp_path / "served.safetensors"))
    hub = _Hub({HUB_REPO: {"model.safetensors": (tmp_path / "served.safetensors").read_bytes()}})
    try:
        project.env.update(HF_HOME=str(tmp_path / "home"), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1",
                           HF_HUB_DISABLE_XET="1")
        args = ["--dataset", "folder:%s" % (project.root / "data" / "pets"), "--model", "timm:resnet18",
                "--pretrained", "--image-size", "16", "--max-steps", "1"] + PLAIN
        project.ok("--prepare-data", *args)
        assert len(hub.gets) == 1
        res = project.ok(*args, "--run-name", "first")
        assert len(hub.gets) == 1 and "loaded 120 of the model's 122 tensors" in res.stderr
        cached = list((tmp_path / "home" / "hub").rglob("model.safetensors"))
        assert len(cached) == 1
        init = load(project.latest("first"))["init"]  # the run's record of where its first weights came from
        assert init["path"].startswith(HUB_REPO + " (%s" % (tmp_path / "home" / "hub")), init["path"]
    finally:
        hub.close()


@needs_timm
def test_the_fine_tuning_recipe_trains_the_head_faster_decays_lower_layers_and_can_freeze_the_backbone():
    from src.loop import optim
    model = _build("timm:resnet18")
    groups = optim.param_groups(_cfg("timm:resnet18", lr_groups=(("fc.*", 10.0),), layer_decay=0.5), model)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.fc.weight)] == 10.0  # the head: the top layer, at its --lr-groups factor
    assert lr_of[id(model.layer4[1].conv1.weight)] == 0.5  # timm's layers: stem, each block, head (ten)
    assert lr_of[id(model.layer4[0].conv1.weight)] == 0.25
    assert lr_of[id(model.conv1.weight)] == 0.5 ** 9
    freeze = optim.Freeze(model, _cfg("timm:resnet18", freeze_backbone=3))
    freeze.update(0)
    assert not model.conv1.weight.requires_grad and not model.layer4[1].bn2.weight.requires_grad
    assert model.fc.weight.requires_grad
    freeze.update(3)
    assert model.conv1.weight.requires_grad


def _pets(project, *extra, run="exact", steps=10):
    return ["--dataset", "folder:%s" % (project.root / "data" / "pets"), "--model", "timm:resnet18", "--pretrained",
            str(project.root / "r18.safetensors"), "--image-size", "16", "--deterministic", "--max-steps", str(steps),
            "--ckpt-every", "2", "--eval-every", "4", "--log-every", "2", "--run-name", run] + list(extra) + PLAIN


@needs_timm
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_fine_tuning_pretrained_weights_resumes_exactly_after_kill_and_stop(tmp_path, sig):
    projects = []
    weights = timm.create_model("resnet18", num_classes=7).state_dict()  # another class count: a fresh head
    for name in ("once", "twice"):
        (tmp_path / name).mkdir()
        project = Project(tmp_path / name)
        write_images(project.root / "data" / "pets", 12)
        save_file(weights, str(project.root / "r18.safetensors"))
        projects.append(project)
    once, twice = projects
    extra = ("--freeze-backbone", "3", "--layer-decay", "0.8")
    a = finish_run(once, _pets(once, *extra), 10)
    prefix = "saved checkpoint step " if sig == signal.SIGKILL else "step "
    b = finish_run(twice, _pets(twice, *extra), 10, stop=(sig, prefix, 4))
    assert same_weights(a, b)
    config = load(twice.latest("exact"))["config"]
    assert (config["optimizer"], config["lr"], config["lr_groups"]) == ("adamw", 3e-4, "fc.*=10")


@needs_timm
def test_predict_gives_what_evaluate_measured_with_the_weights_input_settings(project):
    for split, n in (("train", 12), ("val", 3), ("test", 5)):
        write_images(project.root / "data" / "pets" / split, n, seed=n, size=(20, 14))
    save_file(timm.create_model("resnet18").state_dict(), str(project.root / "r18.safetensors"))
    project.ok(*_pets(project, run="pets", steps=6))
    config = load(project.best("pets"))["config"]
    assert (config["interpolation"], config["crop_pct"], config["std"]) == ("bicubic", 0.95, "0.229,0.224,0.225")
    project.ok("--predict", "data/pets/test", "--run-name", "pets")
    with open(str(project.run_dir("pets") / "predictions-test.csv")) as f:
        found = list(csv.DictReader(f))
    right = sum(row["prediction"] == row["input"].split("/")[0] for row in found)
    test = json.loads(project.ok("--evaluate", "--run-name", "pets").stdout)["test"]
    assert len(found) == 15 and right == round(test["test/acc"] * 15)
    # from_checkpoint on the files, decoded with the run's settings, gives the same probabilities
    from src.data.folder import Decoder
    from src.models import from_checkpoint
    decode = Decoder.of(config, 16, 3)
    x = torch.stack([decode(project.root / "data" / "pets" / "test" / row["input"]) for row in found])
    with torch.no_grad():
        prob = torch.softmax(from_checkpoint(project.best("pets"))(x), 1)
    written = torch.tensor([[float(row["p(%s)" % c]) for c in ("cat", "dog", "fox")] for row in found])
    assert torch.allclose(prob, written, rtol=1e-4, atol=1e-5)


@needs_timm
def test_a_timm_model_trains_in_bf16_and_channels_last_on_the_cpu(project):
    if not hasattr(torch, "autocast"):
        pytest.skip("bf16 on the CPU needs torch >= 1.10")
    project.ok("--dataset", "synthetic", "--synthetic-size", "64", "--synthetic-shape", "3,32,32", "--model",
               "timm:convnext_atto", "--amp", "bf16", "--channels-last", "--max-steps", "2", "--batch-size", "16",
               "--run-name", "fast", *PLAIN)
    assert load(project.latest("fast"))["progress"]["step"] == 2


def test_without_timm_a_timm_model_is_one_line_naming_the_stacks_that_have_it(project):
    if timm is not None:
        pytest.skip("timm is installed here: the stacks without it (torch 1.7.1) run this test")
    res = project.run("--dataset", "synthetic", "--model", "timm:resnet18", "--max-steps", "1", *PLAIN)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "timm" in res.stderr and "stacks/cpu/requirements.txt" in res.stderr
