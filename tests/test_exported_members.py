from pathlib import Path

import instantly_oauth_async
import instantly_oauth_async.testing


def test_all_is_complete_without_duplicates() -> None:
    # submodules of optional extras, attributes of the package once something imports them
    # (and pytest's "@py_builtins", "@pytest_ar": pytest rewrites the asserts of a package whose
    # distribution has a pytest plugin, as this one has since instantly_oauth_async.testing's)
    public = {n for n in dir(instantly_oauth_async) if n.isidentifier() and not n.startswith("_")
              } - {"testing", "redis", "otel", "sqlite", "web"}
    exported = set(instantly_oauth_async.__all__) - {"__version__"}
    assert public == exported
    assert len(instantly_oauth_async.__all__) == len(set(instantly_oauth_async.__all__))


def test_every_exported_exception_derives_from_instantly_error() -> None:
    for name in instantly_oauth_async.__all__:
        obj = getattr(instantly_oauth_async, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, instantly_oauth_async.InstantlyError), name


def test_testing_all_is_complete() -> None:
    public = {n for n in dir(instantly_oauth_async.testing)
              if n.isidentifier() and not n.startswith("_")}
    assert public == set(instantly_oauth_async.testing.__all__)


def test_redis_module_exports_the_store() -> None:
    import instantly_oauth_async.redis as fleet  # noqa: PLC0415 - an optional extra

    assert fleet.__all__ == ["RedisStore"]
    store = fleet.RedisStore.from_url("redis://127.0.0.1:1/0")  # connects on first use only
    assert isinstance(store, instantly_oauth_async.Store)


def test_version_is_a_string() -> None:
    assert isinstance(instantly_oauth_async.__version__, str)
    assert instantly_oauth_async.__version__


def test_the_sqlite_module_exports_the_store(tmp_path: Path) -> None:
    import instantly_oauth_async.sqlite as host  # noqa: PLC0415

    assert host.__all__ == ["SQLiteStore"]
    assert isinstance(host.SQLiteStore(tmp_path / "x.db"), instantly_oauth_async.Store)
