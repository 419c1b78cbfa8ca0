"""The optuna method of a sweep: Optuna's TPE sampler proposes trial n from the results of the trials finished
before it. The sweep's own state file is the one record of trials (written atomically under its lock, like grid
and random sweeps); a study is rebuilt in memory from it for each proposal, with the sampler seeded by the spec's
seed and n, so a sweep continued after a kill proposes exactly what it would have proposed without the kill."""
from ..runtime.errors import UsageError


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError("method optuna needs the optuna package (pip install 'optuna>=3'); or use grid or random")
    if not hasattr(optuna.distributions, "FloatDistribution"):
        raise UsageError("method optuna needs optuna >= 3 (found %s): pip install -U 'optuna>=3'" % optuna.__version__)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distributions(optuna, space):
    d = optuna.distributions
    out = {}
    for dest, entry in space.items():
        kind = entry[0] if isinstance(entry[0], str) and entry[0] in ("uniform", "loguniform", "int") else None
        if kind == "int":
            out[dest] = d.IntDistribution(entry[1], entry[2])
        elif kind:
            out[dest] = d.FloatDistribution(entry[1], entry[2], log=kind == "loguniform")
        else:
            out[dest] = d.CategoricalDistribution(entry)
    return out


def ask(spec, n, history):
    """Trial n's flags; history: (flags, metric value or None when the trial failed) of the finished trials."""
    optuna = _optuna()
    mode = (spec.get("metric") or spec.get("monitor") or ":max").rpartition(":")[2]
    dists = _distributions(optuna, spec["space"])
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=spec["seed"] * 100003 + n))
    for values, value in history:
        params = {k: v for k, v in values.items() if k in dists}
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, state=state))
    return dict(study.ask(dists).params)
