"""Any architecture of the timm library (pytorch-image-models) by name: --model timm:NAME builds it with the
dataset's classes and input channels (timm's own num_classes / in_chans handling; a ViT at the data's image size).

--pretrained brings its weights: the architecture's default ones from the Hugging Face hub (huggingface_hub's
cache under HF_HOME: downloaded once, then read offline), or a local .safetensors / .pth / .bin file. They are
read without running code (safetensors, or torch's weights-only loader), adapted as timm adapts them (the
architecture's own checkpoint filter, say a ViT's position embedding resized to the image size; the first
convolution summed to the data's channels) and loaded by this project's loader, which reports what was loaded and
what starts fresh (a classifier for another number of classes). The weights' data config (image size, resizing,
mean and std) becomes the folder data's where the user set none (app/build.fit_inputs).

timm is imported only when such a model is asked for: the built-in models need none of it, and an environment
without timm (the torch 1.7.1 stack) refuses in one line."""
import difflib
import os
import sys
from pathlib import Path

from . import register
from ..data.folder import RESAMPLE
from ..runtime import compat, registry
from ..runtime.errors import UsageError

EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repositories hold, in timm's order
CONTAINERS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's load_state_dict order


def name_of(cfg):
    """NAME of --model timm:NAME."""
    return registry.argument(cfg.model)


def library(cfg=None):
    """The timm module, or one line saying why it cannot be used here. cfg: its download settings go to the hub
    client before it is first imported (it reads them once)."""
    timeout = getattr(cfg, "download_timeout", None) or 60.0  # a checkpoint's config: from_checkpoint
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(max(1, timeout))))
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(max(1, min(10, timeout)))))
    try:
        import timm
    except ImportError as err:
        raise UsageError("--model %s needs the timm library, which this environment lacks (%s); install the cpu or "
                         "cu12 stack's pins (pip install -r stacks/cpu/requirements.txt), or use a built-in model"
                         % (cfg.model if cfg is not None else "timm:NAME", err))
    except Exception as err:  # torchvision built for another torch: "operator torchvision::nms does not exist"
        raise UsageError("--model %s: timm cannot be imported here (%s: %s); install the torchvision built for "
                         "this torch %s (the stack's pins from its index: for the cpu stack PIP_EXTRA_INDEX_URL="
                         "https://download.pytorch.org/whl/cpu, README \"Stacks\")" % (
                             cfg.model if cfg is not None else "timm:NAME", type(err).__name__,
                             " ".join(str(err).split())[:160], _torch_version()))
    return timm


def _torch_version():
    import torch
    return torch.__version__


def check_name(timm, name):
    """UsageError for a NAME timm does not know, naming the closest ones."""
    arch = name.partition(".")[0]  # resnet18.a1_in1k: architecture and pretrained tag
    if arch and timm.is_model(arch):
        return
    every = timm.list_models()
    close = difflib.get_close_matches(arch, every, n=6, cutoff=0.6) or sorted(
        n for n in every if arch and arch.lower() in n)[:6]
    raise UsageError("--model timm:%s: timm has no such architecture (%s); python -c \"import timm; "
                     "print(timm.list_models('*%s*'))\" lists them" % (
                         name, "closest: %s" % ", ".join(close) if close else "%d known" % len(every),
                         arch[:20] or "resnet"))


def pretrained_cfg(timm, name):
    """timm's pretrained config of NAME (its default tag where none is given) as a dict; {} where it has none."""
    try:
        found = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # a tag the architecture does not have
        raise UsageError("--model timm:%s: %s; give the architecture alone, or one of its tags (timm.list_pretrained"
                         "('%s*'))" % (name, err, name.partition(".")[0]))
    return found.to_dict() if found is not None else {}


def inputs(cfg):
    """The data settings the --pretrained weights were trained with (timm's data config): image_size,
    interpolation, crop_pct, mean, std."""
    timm = library(cfg)
    check_name(timm, name_of(cfg))
    pcfg = pretrained_cfg(timm, name_of(cfg))
    out = {}
    if pcfg.get("input_size"):
        out["image_size"] = int(pcfg["input_size"][-1])
    for key in ("interpolation", "crop_pct", "mean", "std"):
        if pcfg.get(key) is not None:
            out[key] = pcfg[key]
    if out.get("interpolation") not in RESAMPLE:  # a name Pillow has no filter for: the default resizing
        out.pop("interpolation", None)
    return out


def build(input_shape, num_classes, cfg):
    timm = library(cfg)
    name = name_of(cfg)
    check_name(timm, name)
    if len(input_shape) != 3:
        raise ValueError("timm:%s takes images (C, H, W), not inputs of shape %s" % (name, tuple(input_shape)))
    kwargs = dict(num_classes=num_classes, in_chans=input_shape[0])
    if cfg.dropout:
        kwargs["drop_rate"] = cfg.dropout
    if getattr(cfg, "drop_path", 0):
        kwargs["drop_path_rate"] = cfg.drop_path
    if pretrained_cfg(timm, name).get("fixed_input_size"):  # a ViT: position embeddings for this image size
        kwargs["img_size"] = tuple(input_shape[1:])
    return timm.create_model(name, pretrained=False, **kwargs)


def head(model):
    """The names of the classifier's modules (timm's pretrained config says them: fc, head.fc, classifier)."""
    names = (getattr(compat.unwrap_model(model), "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def layers(model):
    """{parameter name: layer index} from the input up (timm's group_matcher, the one its layer decay uses)."""
    from timm.models import group_parameters
    model = compat.unwrap_model(model)
    if not hasattr(model, "group_matcher"):
        return None
    return dict(group_parameters(model, model.group_matcher(coarse=False), reverse=True))


def locate(cfg):
    """(path, how the report names it) of --pretrained's file: PATH, or the hub's file (its cache, else downloaded
    into it). A fresh run asks this before it reads the data: no weights is one line before any work."""
    timm = library(cfg)
    check_name(timm, name_of(cfg))
    if cfg.pretrained != "hub":
        path = Path(cfg.pretrained).expanduser()
        if not path.is_file():
            raise UsageError("--pretrained %s: no such file; give a weights file (%s), or --pretrained alone for "
                             "the hub's" % (cfg.pretrained, ", ".join(EXTENSIONS)))
        return path, cfg.pretrained
    pcfg = pretrained_cfg(timm, name_of(cfg))
    path = _from_hub(cfg, pcfg)
    return path, "%s (%s)" % (pcfg.get("hf_hub_id"), path)


def weights(cfg, model, located=None):
    """(state dict, where it came from) of --pretrained, adapted to model as timm adapts pretrained weights.
    located: locate(cfg)'s answer where the run has it already."""
    path, where = located or locate(cfg)
    state = read(path, "--pretrained %s" % where)
    return _adapt(state, model, pretrained_cfg(library(cfg), name_of(cfg)), where), where


def read(path, what):
    """A weights file as {name: tensor}: safetensors, or a torch file read without running code; the weights
    inside timm's and torch's usual containers (state_dict, model, their EMA), wrapper prefixes dropped."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("%s: no such file; give a weights file (%s) or --pretrained alone for the hub's"
                         % (what, ", ".join(EXTENSIONS)))
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = compat.load_file(path)
    except ImportError as err:
        raise UsageError("%s: reading .safetensors needs the safetensors package (%s); install the stack's pins"
                         % (what, err))
    except Exception as err:  # not a weights file, truncated, or a pickle that would run code
        raise UsageError("%s: not a weights file that can be read safely (%s); give a .safetensors file, or a "
                         "torch file of tensors" % (what, " ".join(str(err).split())[:160] or type(err).__name__))
    for key in CONTAINERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    import torch
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError("%s holds no tensors by name; give the model's state dict (.safetensors, .pth, .bin)"
                         % what)
    return compat.clean_state_dict({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


def _adapt(state, model, pcfg, where):
    """The architecture's checkpoint filter (timm's pretrained_filter_fn: it renames original checkpoints' keys
    and resizes a ViT's position embedding), then the first convolution to the model's input channels."""
    from timm.models import adapt_input_conv
    model = compat.unwrap_model(model)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            try:
                state = filter_fn(state, model)
            except TypeError:
                state = filter_fn(state)
        except Exception as err:
            raise UsageError("--pretrained %s does not fit timm's filter for this architecture (%s: %s); give "
                             "weights of the same architecture" % (where, type(err).__name__,
                                                                   " ".join(str(err).split())[:120]))
    convs = pcfg.get("first_conv") or ()
    for conv in (convs,) if isinstance(convs, str) else convs:
        key = conv + ".weight"
        try:
            module = model.get_submodule(conv)
        except AttributeError:
            continue
        weight = state.get(key)
        if weight is not None and weight.dim() == 4 and weight.shape[1] != module.weight.shape[1]:
            try:
                state[key] = adapt_input_conv(module.weight.shape[1], weight)
            except NotImplementedError:
                pass  # left as it is: the load report names it fresh
    return state


def _from_hub(cfg, pcfg):
    """The local path of the architecture's default weights: huggingface_hub's cache, else downloaded into it
    (once; with --no-download only the cache). One line, never a traceback, when neither works; an endpoint that
    cannot be reached is found in one connection attempt (within --download-timeout), not the client's retries."""
    repo = pcfg.get("hf_hub_id")
    if not repo:
        raise UsageError("--pretrained: timm has no hub weights for %s (its weights come from %s); give "
                         "--pretrained PATH of a weights file" % (cfg.model, pcfg.get("url") or "nowhere"))
    import logging
    from huggingface_hub import constants, hf_hub_download
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings: the line below says it
    constants.HF_HUB_DOWNLOAD_TIMEOUT = max(1, int(cfg.download_timeout))
    for filename in HUB_FILES:  # a file downloaded before needs no network
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=True))
        except Exception:
            pass
    reasons = []
    if not cfg.download or constants.HF_HUB_OFFLINE:
        reasons.append("--no-download" if not cfg.download else "HF_HUB_OFFLINE is set")
    else:
        reason = _unreachable(constants.ENDPOINT, min(10.0, cfg.download_timeout))
        if reason:
            reasons.append(reason)
        else:
            for filename in HUB_FILES:
                try:
                    return Path(hf_hub_download(repo, filename, etag_timeout=min(10.0, cfg.download_timeout)))
                except Exception as err:  # no such file, refused, timed out: the next file, then one line
                    reasons.append("%s: %s" % (filename, " ".join(str(err).split())[:100] or type(err).__name__))
    home = os.environ.get("HF_HOME") or str(Path(constants.HF_HUB_CACHE).parent)
    raise UsageError("--pretrained: the weights of %s (%s) are neither in the hub's cache in %s nor to be had from "
                     "the hub (%s); where there is internet: hf download %s %s, then give --pretrained PATH of that "
                     "file (or copy that machine's HF_HOME/hub folder here)" % (
                         cfg.model, repo, home, "; ".join(reasons)[:300], repo, HUB_FILES[0]))


def _unreachable(endpoint, timeout):
    """Why the hub's endpoint cannot be reached (one TCP connection, DNS included), or None."""
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(endpoint)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except (OSError, ValueError) as err:
        return "%s cannot be reached: %s" % (endpoint, getattr(err, "strerror", None) or err)
    return None


register("timm", named=True, inputs=inputs, locate=locate, pretrained=weights, head=head, layers=layers)(build)
