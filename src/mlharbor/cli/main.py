"""The ``mlharbor`` command: one Typer app whose subcommands import their stage lazily.

Errors are caught here, once: a :class:`MlharborError` becomes one readable line on stderr and a
non-zero exit code chosen from :data:`EXIT_CODES`; anything else becomes one line too, and a
traceback only with ``--debug``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from mlharbor.core import errors

# Subcommand modules. Each exposes ``register(app: typer.Typer) -> None`` and imports heavy
# libraries only inside its commands, so `mlharbor --help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "mlharbor.cli.config",
    "mlharbor.cli.models",
    "mlharbor.cli.cards",  # adds `models card` to the group above
    "mlharbor.cli.server",
    "mlharbor.cli.worker",
    "mlharbor.cli.demo",
    "mlharbor.cli.serve",
    "mlharbor.cli.endpoints",
    "mlharbor.cli.admin",
    "mlharbor.cli.audit",
    "mlharbor.cli.keys",
    "mlharbor.cli.train",
    "mlharbor.cli.runs",  # issue 16: list, show and compare tracked runs
    "mlharbor.cli.monitor",
    "mlharbor.cli.build",
    "mlharbor.cli.deploy",
    "mlharbor.cli.jobs",
    "mlharbor.cli.policies",
    "mlharbor.cli.predict",
)

EXIT_CODES: dict[type[errors.MlharborError], int] = {
    errors.InvalidInputError: 2,
    errors.NotFoundError: 3,
    errors.ConflictError: 4,
    errors.IntegrityError: 5,
    errors.UnsafeArtifactError: 5,
    errors.AuthenticationError: 6,
    errors.PermissionDeniedError: 6,
    errors.LimitExceededError: 7,
    errors.TimeoutError_: 7,
    errors.UnavailableError: 8,
}


# File-system errors about one path (``filename`` set); anything else stays unexpected.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError)


def exit_code_for(exc: errors.MlharborError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def create_app(command: str | None = None) -> typer.Typer:
    """The ``mlharbor`` app; with ``command``, only that command (or group) when it exists:
    Typer builds a Click command for every registered one on each run (about 80, a tenth of
    ``mlharbor serve``'s start-up), though a run uses one."""
    app = typer.Typer(
        name="mlharbor",
        help="Train, register, serve and monitor machine-learning models.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )

    @app.callback()
    def _root(
        ctx: typer.Context,
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
        config: str = typer.Option(
            None, "--config", help="YAML or TOML settings file (also MLHARBOR_CONFIG)."
        ),
    ) -> None:
        ctx.obj = {"debug": debug, "config": config}

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    if command is not None:
        commands = [c for c in app.registered_commands if (c.name or typer.main.get_command_name(
            c.callback.__name__ if c.callback else "")) == command]
        groups = [g for g in app.registered_groups if g.name == command]
        if commands or groups:  # else click's "No such command" lists them all
            app.registered_commands, app.registered_groups = commands, groups
    return app


def _command_in(args: list[str]) -> str | None:
    """The subcommand ``args`` run, if the root options before it are only --debug and
    --config (any --help before it asks for the whole list)."""
    value_next = False
    for arg in args:
        if value_next:
            value_next = False
        elif arg == "--config":
            value_next = True
        elif arg in ("--help", "-h"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    app = create_app(_command_in(args))
    try:
        # Without standalone mode, click returns the code of a `typer.Exit` instead of exiting.
        result = app(args=args, prog_name="mlharbor", standalone_mode=False)
        if isinstance(result, int) and result != 0:
            sys.exit(result)
    except errors.MlharborError as exc:
        if debug:
            raise
        _fail(f"error: {exc}", exit_code_for(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        kind = _click_kind(exc)
        if kind == "usage":
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if kind == "exit":
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if kind == "abort":
            _fail("aborted", 130)
        if debug:
            raise
        if isinstance(exc, PATH_ERRORS) and exc.filename:
            # A path the user gave that a command opened without routing it through
            # cli.output: still bad input (exit 2), one line naming the path.
            _fail(f"error: cannot use {str(exc.filename)!r}: {exc.strerror or exc}. Check the "
                  "path (run with --debug for the traceback).", 2)
        _fail(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            1,
        )


def _click_kind(exc: BaseException) -> str | None:
    """Typer ships its own copy of click, so its exceptions are recognised by name."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ClickException" in names:
        return "usage"
    if "Exit" in names and hasattr(exc, "exit_code"):
        return "exit"
    if "Abort" in names:
        return "abort"
    return None


def _fail(message: str, code: int) -> None:
    one_line = " ".join(message.split())
    sys.stderr.write(one_line + "\n")
    sys.exit(code)


def settings_from(ctx: typer.Context) -> Any:
    """Read the settings once for this invocation (the CLI's entry point)."""
    from pathlib import Path

    from mlharbor.settings import load_settings

    root = ctx.find_root()
    obj = root.obj or {}
    if "settings" not in obj:
        config = obj.get("config")
        settings = load_settings(Path(config) if config else None, discover=True)
        _say_if_new_home(settings)
        obj["settings"] = settings
        root.obj = obj
    return obj["settings"]


def _say_if_new_home(settings: Any) -> None:
    """A command run where no home exists would silently start an empty registry there: say
    which home is in use and how to point at another (one line, on stderr)."""
    import os

    from mlharbor.settings import CONFIG_ENV_VAR

    home = settings.home
    if home.exists() or settings.database_url_value != f"sqlite:///{home / 'mlharbor.db'}":
        return
    source = os.environ.get(CONFIG_ENV_VAR)
    why = (f"from the config file {source}" if source else
           "MLHARBOR_HOME" if os.environ.get("MLHARBOR_HOME") else "the default, ./.mlharbor")
    sys.stderr.write(
        f"note: using a new, empty home at {home} ({why}); to use another, set MLHARBOR_HOME "
        "or put an mlharbor.yaml with 'home: PATH' in this folder or a parent.\n")
