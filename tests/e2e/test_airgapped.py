"""README "Air-gapped builds", typed as written in a fresh checkout on a Docker engine with no registry at all
(as CI has): a Debian base image made by debootstrap + docker import, the wheelhouse, setup.sh with the
documented settings, run.sh training to the end; then `./test.sh` would read the same settings from .env.

The checkout starts with the wheels CI already downloaded (hard links): the wheelhouse command then resolves its
pins against PyPI and finds every file in place, as on a second run."""
import subprocess

from checkout import fresh_checkout, skip_without_docker
from test_readme import readme_block

skip_without_docker()


def test_the_air_gapped_route_works_as_written(tmp_path_factory):
    co = fresh_checkout(tmp_path_factory, "tplair", drop_env=("BASE_IMAGE", "ENV_MANAGER", "STACK"))
    try:
        block = readme_block("### Air-gapped builds")
        res = co.sh("bash", "-c", "set -euo pipefail\n" + block, timeout=1800)
        assert "setup.sh: ready" in res.stdout, res.stdout[-3000:]
        assert "\x1b" not in res.stdout, "terminal control codes in output that is not a terminal"
        assert co.wait_exit("trainer") == 0, co.compose("logs", "trainer").stdout[-3000:]
        env = (co.root / ".env").read_text()
        assert "BASE_IMAGE=local/debian:bookworm\n" in env and "ENV_MANAGER=venv\n" in env and "STACK=cpu\n" in env
        assert (co.root / "models" / "best" / "digits-cnn.pt").is_file()
        # test.sh's view of the build settings: .env's (docker/lib.sh export_build_settings)
        shown = subprocess.run(["bash", "-c", 'set -euo pipefail; ROOT="$1"; source "$1/docker/lib.sh"; '
                                'export_build_settings; echo "$BASE_IMAGE $ENV_MANAGER $STACK"', "test.sh",
                                str(co.root)], env=co.env, stdout=subprocess.PIPE, text=True).stdout
        assert shown.strip() == "local/debian:bookworm venv cpu", shown
    finally:
        co.sh("./purge.sh", "--yes", check=False)
