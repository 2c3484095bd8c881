"""The dependency pins that keep Prefect's server importable."""

from importlib.metadata import version


def test_fastapi_is_below_the_version_that_breaks_prefect_server():
    major, minor = (int(p) for p in version("fastapi").split(".")[:2])
    assert (major, minor) < (0, 150), "prefect 3.8's server fails with fastapi>=0.150 (min_items)"


def test_prefect_server_app_builds():
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True)
    assert "/api" in {getattr(route, "path", "") for route in app.routes}  # the API is mounted


def test_sqlalchemy_is_below_the_version_that_breaks_prefects_scheduler():
    major, minor = (int(p) for p in version("sqlalchemy").split(".")[:2])
    # prefect 3.8's scheduler inserts runs with a bulk DML form SQLAlchemy 2.1 refuses, so no
    # schedule fires; tests/integration/test_triggers.py runs a scheduled sensor for real.
    assert (major, minor) < (2, 1), "prefect 3.8's scheduler fails with sqlalchemy>=2.1"
