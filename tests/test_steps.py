"""The long benchmarks' runner (benchmarks/steps.py): one SIGTERM to it reaches the step it runs, so a training
step saves its checkpoint and the runner stops instead of going on to the next step."""
import os
import signal
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigterm_to_the_runner_stops_its_step_and_the_runner(tmp_path):
    step = tmp_path / 'step.py'  # stands for main.py: saves on SIGTERM and exits 143, as jobs/train.py does
    step.write_text(textwrap.dedent(f"""
        import signal, sys, time
        def save(signum, frame):
            open({str(tmp_path / 'saved')!r}, 'w').close()
            sys.exit(143)
        signal.signal(signal.SIGTERM, save)
        print('ready', flush=True)
        time.sleep(60)
    """))
    runner = tmp_path / 'runner.py'
    runner.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, 'benchmarks')!r})
        from steps import Steps
        steps = Steps({{'first': 1.0, 'second': 1.0}})
        steps.run('first', False, script={str(step)!r})
        steps.run('second', False, script={str(step)!r})
    """))
    proc = subprocess.Popen([sys.executable, str(runner)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if 'ready' in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert (tmp_path / 'saved').exists()  # the step got the signal and saved
    assert proc.returncode != 0 and "step 'first' failed (exit 143); rerun the same command to resume" in err
    assert 'second' not in out  # the runner did not go on
