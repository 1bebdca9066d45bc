"""The sandbox that runs generated code (HumanEval's completions): judge.py starts one box per
check at the strongest isolation level the machine allows (isolation.py: bubblewrap, setpriv, a
user namespace, plain) and maps whatever happens to a verdict; child.py is the program inside
the box, read as text and run with `python -I -c`, importing nothing of this project.

May import: nothing of specexp outside this package (docs/sandbox.md)."""
from specexp import _moved

__getattr__ = _moved.package_getattr(__name__)  # `specexp.tasks.sandbox.check_many` of 0.1, with a warning
