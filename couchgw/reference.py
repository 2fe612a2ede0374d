"""
The configuration reference, generated from the plugin's options so that it cannot drift:

    python -m couchgw.reference > docs/configuration.md
"""

from __future__ import annotations

from couchgw.options import SECRET_ENV, Options

HEADER = """# Configuration reference

Generated from `twistd couchgw --help` by `python -m couchgw.reference`; do not edit by hand.

    twistd [twistd options] couchgw [options]

{longdesc}

Environment: `COUCHGW_COUCH_USER` / `COUCHGW_COUCH_PASSWORD` (CouchDB credentials when the URL
has none), `{secret}` (the callback secret), `COUCHGW_POUCHDB_SERVER` (where the embedded
CouchDB's executable is), the standard `OTEL_*` variables of OpenTelemetry (traces: see
[operations.md](operations.md#traces)). twistd's own options (`--nodaemon`, `--logfile`,
`--logger`, `--pidfile`, ...) come before `couchgw`; `twistd --help` lists them.

| option | default | meaning |
|---|---|---|
"""


def rows() -> list[tuple[str, str, str]]:
    """(option, default, help) for each option, in the order --help shows them."""
    found = []
    for name, _short, default, text, *_ in Options.optParameters:
        shown = "none" if default is None else f"`{default}`"
        found.append((f"`--{name}`", shown, " ".join(str(text).split())))
    for name, _short, text in Options.optFlags:
        found.append((f"`--{name}`", "off", " ".join(str(text).split())))
    return found


def reference() -> str:
    text = HEADER.format(longdesc=" ".join(Options.longdesc.split()), secret=SECRET_ENV)
    for option, default, meaning in rows():
        cell = meaning.replace("|", "\\|")
        text += f"| {option} | {default} | {cell} |\n"
    return text


if __name__ == "__main__":
    print(reference(), end="")
