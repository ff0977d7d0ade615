"""The study's closing line says how to look at its runs, in the way that fits the tracking URI."""

import pytest

from study.run import browse_hint


@pytest.mark.parametrize("uri", ["sqlite:////work/studies/demo/mlflow.db", "file:///work/studies/demo/mlruns"])
def test_a_local_store_is_served_by_mlflow_ui(uri):
    assert browse_hint(uri) == f"mlflow ui --backend-store-uri {uri}"


@pytest.mark.parametrize("uri, tunnel, local", [
    ("http://10.0.0.10:5000", "ssh -N -L 5000:10.0.0.10:5000 <user>@<head>", "http://127.0.0.1:5000"),
    ("https://mlflow.internal", "ssh -N -L 443:mlflow.internal:443 <user>@<head>", "https://127.0.0.1:443"),
])
def test_a_tracking_server_is_opened_in_a_browser_or_through_a_tunnel(uri, tunnel, local):
    hint = browse_hint(uri)
    assert hint.startswith(f"a browser at {uri} ") and tunnel in hint and hint.endswith(f"then {local})")
    assert "mlflow ui" not in hint


def test_a_store_path_with_spaces_is_quoted_so_the_line_pastes_into_a_shell():
    import shlex

    uri = "sqlite:////work/my studies/demo 'one'/mlflow.db"
    hint = browse_hint(uri)
    assert shlex.split(hint) == ["mlflow", "ui", "--backend-store-uri", uri]
