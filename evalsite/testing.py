"""pytest plugin loaded before Django (``-p evalsite.testing`` in pytest.ini).

It fixes the environment the settings module reads, so that tests never touch
the development database, media or broker folders under var/.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NEEDLE_VAR_DIR", str(BASE_DIR / "var" / "test"))
os.environ.setdefault("MEDIA_ROOT", str(Path(os.environ["NEEDLE_VAR_DIR"]) / "media"))
