"""Entry point of the packaged Lantern app (PyInstaller runs this file; see build/lantern.spec).

It only dispatches to ``viewer.app.main``: ``lantern --selftest`` works in the frozen app as in
a source checkout.
"""

import sys

from viewer.app import main

if __name__ == "__main__":
    sys.exit(main())
