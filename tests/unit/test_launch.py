"""The apparate command's entry point, while it still loads the command line."""

import subprocess
import sys

# Raises KeyboardInterrupt where importing the command line takes its time,
# as Ctrl-C then does.
INTERRUPTED_IMPORT = """
import sys

class Interrupting:
    def find_spec(self, name, path=None, target=None):
        if name == "apparate.cli.main":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupting())
from apparate.cli.launch import run
run()
"""


def test_ctrl_c_while_loading_is_one_line():
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 130
    assert done.stderr == "error: interrupted\n"


def test_entry_point_loads_nothing_heavy():
    code = "import sys, apparate.cli.launch; print('httpx' in sys.modules)"

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == "False"
