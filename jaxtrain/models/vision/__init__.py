"""Vision towers and projectors of vision-language models (math + logical axes), and the
host-side layout of their inputs (`layout.py`, numpy only)."""
