"""The entry scripts load torch and Lightning with the garbage collector paused."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench import _KFOLD_SCRIPT

from lit_cnn.cli.startup import collector_paused

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def unfreeze():
    yield
    gc.unfreeze()  # hand what the test froze back to the collector
    gc.enable()


def test_collector_off_inside_and_back_on_with_the_block_frozen(unfreeze):
    assert gc.isenabled()
    before = gc.get_freeze_count()
    with collector_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(5_000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)
    assert all(gc.is_tracked(m) for m in made)


def test_collector_stays_off_when_it_was_off(unfreeze):
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_collector_back_on_after_an_error(unfreeze):
    with pytest.raises(ImportError), collector_paused():
        import lit_cnn_no_such_module  # noqa: F401
    assert gc.isenabled()


# Runs the script's imports (not its main) in a fresh interpreter and reports what the
# collector did meanwhile: passes made once torch had started loading (runpy's and
# lit_cnn.cli.startup's own imports come before the pause; without it there were about 1,000).
_PROBE = """
import gc, json, runpy, sys
passes = []
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append("torch" in sys.modules))
runpy.run_path(sys.argv[1], run_name="probe")
print(json.dumps({
    "passes_with_torch": sum(passes),
    "enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
    "lightning": "lightning" in sys.modules,
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("script", ["kfold.py", "compare.py"])
def test_scripts_import_without_collections(script):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT / "scripts" / script)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["lightning"]  # the imports did happen
    assert probe["passes_with_torch"] == 0
    assert probe["enabled"]
    assert probe["frozen"] > 100_000  # torch's and Lightning's objects


# Runs bench.py's no-checkout command with lit_cnn.cv.malloc.tune_malloc wrapped, and prints at
# interpreter exit whether it was called (and what it returned) and whether the collector
# was back on: the script's set-up, then a normal exit.
_NO_CHECKOUT = """
import atexit, gc, sys
import lit_cnn.cv.malloc as malloc
real, calls = malloc.tune_malloc, []
malloc.tune_malloc = lambda: calls.append(real()) or calls[-1]
atexit.register(lambda: print("probe", calls, gc.isenabled(), flush=True))
sys.argv = ["kfold", *sys.argv[1:]]
exec(compile(SCRIPT, "<kfold>", "exec"), {"__name__": "__main__"})
"""


@pytest.mark.slow
def test_bench_runs_kfold_the_script_way_without_a_checkout():
    # What bench.py runs when scripts/kfold.py is not there: the same imports, the same
    # malloc settings, then the CLI, ending in a normal exit.
    probe = _NO_CHECKOUT.replace("SCRIPT", repr(_KFOLD_SCRIPT))
    out = subprocess.run(
        [sys.executable, "-c", probe, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "--data.k" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "probe [True] True"


@pytest.mark.slow
def test_bench_s_no_checkout_command_trains_and_exits_cleanly(tiny_pkl, tmp_path):
    # A whole (tiny) run through that command: status 0 and the run directory printed last,
    # as scripts/kfold.py ends.
    args = ["--model", "ResNN", "--data.path", str(tiny_pkl), "--data.k", "2"]
    more = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    out = subprocess.run(
        [sys.executable, "-c", _KFOLD_SCRIPT, *args, *more, "--trainer.default_root_dir", "."],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = Path(tmp_path, out.stdout.strip().splitlines()[-1])
    assert (run_dir / "results.json").is_file()
