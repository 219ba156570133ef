"""`streamlit run app/main.py` in a checkout starts the app, which lives in met_core/app/ so that `pip install .[app]`
ships it (`met app` starts it when installed)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "met_core" / "app" / "main.py"), run_name="__main__")
