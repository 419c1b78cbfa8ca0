"""What a sweep's trials gave: each trial's outcome (from its exit code and logs/<run>/metrics.json), results.csv,
the TensorBoard HParams view, and the summary at the end: the best trial by its validation metric (never the
test one), its flags and command, and per point of the sweep the mean, std and 95 % interval of every test
metric over its seeds (Student's t, on a scale where the metric is unbounded: stats)."""
import csv
import io
import json
import logging
import math
import shutil

from ..files import atomic
from ..runtime.slurm import REQUEUE_EXIT

log = logging.getLogger("train")
# Student's t, two-sided 95 %: t(0.975, df) for df = 1 .. 30; beyond, the normal's 1.96 plus the first terms of
# its expansion in 1/df (within 1e-3 of the exact value)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


# The range of a metric by its name (after test/): its 95 % interval is made where the metric is unbounded and
# mapped back, so that it stays inside the range with any number of seeds
UNIT = ("acc", "balanced_acc", "f1", "auc", "map", "miou", "iou", "dice", "exact", "pixel_acc")
POSITIVE = ("loss", "mae", "rmse", "mape")
EDGE = 1e-3  # a value on a bound is taken this far inside it (one sample in a thousand)


def _scale(metric):
    """(to, back) of the scale a metric's interval is made on: logit for [0, 1] metrics, log(1 - r2) for R^2
    (at most 1), log for positive ones, else the metric itself."""
    name = metric.rpartition("/")[2]
    if name in UNIT:
        def to(v):
            v = min(1 - EDGE, max(EDGE, v))
            return math.log(v / (1 - v))
        return to, lambda u: 1 / (1 + math.exp(-u))
    if name == "r2":
        return (lambda v: math.log(max(EDGE, 1 - v))), (lambda u: 1 - math.exp(u))
    if name in POSITIVE:
        return (lambda v: math.log(max(EDGE, v))), math.exp
    return (lambda v: v), (lambda u: u)


def stats(values, metric=""):
    """n, mean, sample std, the half width of Student's t 95 % interval of the mean (ci95, symmetric), and the
    interval made on the metric's own scale (low .. high: Student's t on the logit of a [0, 1] metric, on
    log(1 - R^2), on the log of a positive one; it stays inside the metric's range however few the seeds are).
    None for fewer than 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None, "low": None, "high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    to, back = _scale(metric)
    scaled = [to(v) for v in values]
    centre = sum(scaled) / n
    spread = t975(n - 1) * math.sqrt(sum((u - centre) ** 2 for u in scaled) / (n - 1)) / math.sqrt(n)
    try:
        low, high = sorted((back(centre - spread), back(centre + spread)))
    except OverflowError:
        low, high = mean - half, mean + half
    return {"n": n, "mean": mean, "std": std, "ci95": half, "low": low, "high": high}


def _last_line(path):
    """The last error line of a trial's output (or its last line)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error:" in ln or "Error" in ln]
    return (errors or lines or [""])[-1][:500]


def outcome(sweep, trial, code, stopping):
    """How a trial's process ended: done (with its results), stopped (resumable) or failed (with why)."""
    metrics_file = sweep.dir.parent / trial["run"] / "metrics.json"
    if code == 0 and metrics_file.is_file():
        report = json.loads(metrics_file.read_text())
        best = report.get("best") or {}
        metric = sweep.spec.get("metric") or best.get("monitor") or sweep.spec["monitor"]
        name = metric.rpartition(":")[0]
        value = best.get("value") if name == str(best.get("monitor", "")).rpartition(":")[0] else \
            (best.get("val") or {}).get(name)
        return {"state": "done", "exit": 0, "step": report.get("step"), "value": value, "metric": metric,
                "best_step": best.get("step"), "test": report.get("test") or {}, "error": None}
    if code in (0, REQUEUE_EXIT) or stopping:  # under a stop, any end is the stop's (even a SIGTERM that came
        return {"state": "stopped", "exit": code, "error": None}  # before the trial's handler): it resumes
    why = "killed by %s" % signal_name(-code) if code < 0 else "exit %d" % code
    return {"state": "failed", "exit": code, "error": "%s: %s" % (why, _last_line(
        sweep.dir / ("trial-%d.log" % trial["trial"])))}


def signal_name(number):
    import signal
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


def varied(state):
    """The flags that vary between the sweep's trials, in spec order."""
    keys = []
    for trial in state["trials"]:
        for key in trial["flags"]:
            if key not in keys:
                keys.append(key)
    return keys


def _metrics(state):
    keys = []
    for trial in state["trials"]:
        for key in sorted(trial.get("test") or {}):
            if key.count("/") < 2 and key not in keys:
                keys.append(key)
    return keys


def write_csv(sweep, state):
    """logs/<sweep>/results.csv: one row per trial (atomically, with the state)."""
    keys, metrics = varied(state), _metrics(state)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["trial", "run", "state"] + keys + ["metric", "best_val", "best_step"] + metrics +
                 ["steps", "seconds", "attempts", "error"])
    for t in state["trials"]:
        out.writerow([t["trial"], t["run"], t["state"]] + [t["flags"].get(k, "") for k in keys] +
                     [t.get("metric") or "", _num(t.get("value")), _num(t.get("best_step"))] +
                     [_num((t.get("test") or {}).get(m)) for m in metrics] +
                     [_num(t.get("step")), "%.1f" % t.get("seconds", 0.0), t.get("attempts", 0), t.get("error") or ""])
    atomic.write_text(sweep.dir / "results.csv", buf.getvalue())


def _num(value):
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def write_view(sweep, state, trial):
    """logs/<sweep>/<run>/: the trial's varied flags and final metrics for TensorBoard's HParams view of the sweep
    (tensorboard --logdir logs/<sweep>); written once, when the trial is done."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams
    folder = sweep.dir / trial["run"]
    if folder.exists():
        shutil.rmtree(str(folder))
    values = dict({"trial": trial["trial"]}, **{k: _hparam(trial["flags"].get(k)) for k in varied(state)})
    metrics = {k: v for k, v in trial["test"].items() if k.count("/") < 2}
    if trial.get("value") is not None:
        metrics["best/" + trial["metric"].rpartition(":")[0]] = trial["value"]
    writer = SummaryWriter(log_dir=str(folder))
    try:
        _, start, end = hparams(values, metrics)
        for summary in (start, end):
            writer._get_file_writer().add_summary(summary)
        for key, value in metrics.items():
            writer.add_scalar(key, value, trial.get("step") or 0)
    finally:
        writer.close()


def _hparam(value):
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def describe_flags(values):
    return ", ".join("%s=%s" % (k, v) for k, v in values.items()) or "the base flags"


def describe_outcome(t, folder):
    if t["state"] == "done":
        tests = ", ".join("%s %.4g" % (k, v) for k, v in sorted(t["test"].items()) if k.count("/") < 2)
        return "done in %.1f s: best %s %s at step %s; %s" % (t["seconds"], t["metric"].rpartition(":")[0],
                                                              _fmt(t.get("value")), t.get("best_step"), tests)
    if t["state"] == "stopped":
        return "stopped after %.1f s (exit %d): it resumes from its checkpoint when the sweep continues" % (
            t["seconds"], t["exit"])
    return "FAILED (%s); its output: %s. The sweep goes on; --retry-failed runs it again" % (
        t["error"], folder / ("trial-%d.log" % t["trial"]))


def _fmt(value):
    return "%.4g" % value if isinstance(value, (int, float)) else str(value)


def unfinished(state):
    """Runs of trials not yet done or failed (being run elsewhere, or stopped)."""
    return [t["run"] for t in state["trials"] if t["state"] not in ("done", "failed")]


def _groups(state):
    """Trials by their flags without the seed: one group per point of the sweep."""
    groups = {}
    for t in state["trials"]:
        if t["state"] == "done":
            key = json.dumps({k: v for k, v in t["flags"].items() if k != "seed"}, sort_keys=True)
            groups.setdefault(key, []).append(t)
    return groups


def summarize(sweep, state):
    """The one-screen summary at the end (and logs/<sweep>/summary.json)."""
    done = [t for t in state["trials"] if t["state"] == "done"]
    failed = [t for t in state["trials"] if t["state"] == "failed"]
    summary = {"sweep": sweep.name, "trials": len(state["trials"]), "done": len(done), "failed": len(failed),
               "seconds": sum(t.get("seconds", 0.0) for t in state["trials"]), "points": []}
    log.info("sweep %s: %d trials done, %d failed, %.0f s of training in all; %s", sweep.name, len(done),
             len(failed), summary["seconds"], sweep.dir / "results.csv")
    for t in failed:
        log.info("  trial %d (%s) FAILED: %s; again with --retry-failed", t["trial"], t["run"], t["error"])
    scored = [t for t in done if t.get("value") is not None]
    if scored:
        mode = scored[0]["metric"].rpartition(":")[2]
        best = (max if mode == "max" else min)(scored, key=lambda t: (t["value"], -t["trial"]))
        command = "python train.py --config %s --run-name %s" % (sweep.dir / ("trial-%d.yaml" % best["trial"]),
                                                                  best["run"])
        summary["best"] = {"trial": best["trial"], "run": best["run"], "flags": best["flags"],
                           "metric": best["metric"], "value": best["value"], "test": best["test"], "command": command}
        log.info("best trial (by %s, on validation data): %d (%s) %s: %s %s; %s", best["metric"], best["trial"],
                 best["run"], describe_flags(best["flags"]), best["metric"].rpartition(":")[0], _fmt(best["value"]),
                 ", ".join("%s %.4g" % (k, v) for k, v in sorted(best["test"].items()) if k.count("/") < 2))
        log.info("  its command: %s", command)
    for key, trials in _groups(state).items():
        point = {"flags": json.loads(key), "trials": [t["trial"] for t in trials], "test": {}}
        for metric in sorted(trials[0]["test"]):
            if metric.count("/") < 2:
                point["test"][metric] = stats([t["test"][metric] for t in trials if metric in t["test"]], metric)
        summary["points"].append(point)
        if len(trials) > 1:
            log.info("%s over %d seeds (%s): %s", describe_flags(point["flags"]), len(trials),
                     ",".join(str(t["flags"].get("seed", "")) for t in trials),
                     "; ".join("%s %.4f +- %.4f (std; 95%% interval %.4f .. %.4f)" % (
                         m, s["mean"], s["std"], s["low"], s["high"])
                         for m, s in point["test"].items()))
    atomic.write_text(sweep.dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    log.info("TensorBoard's HParams view of the sweep: tensorboard --logdir %s", sweep.dir)
    return summary
