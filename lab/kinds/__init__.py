"""The lab's own kinds of discovery; importing this package registers each of them.

Each subpackage builds its ``lab.core.kind.Kind`` record and registers it; kinds of other
installed packages register through the entry point group ``lab.kinds`` (see
``examples/kind_plugin``). The command layer imports this package before it looks a kind up.
"""

from lab.kinds import baseline, drift, learned, pbt, program

__all__ = ["baseline", "drift", "learned", "pbt", "program"]
