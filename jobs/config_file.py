"""``--config FILE.toml`` for every job: a job's flags written down once, read with Python's tomllib.

The keys are the flag names without their leading dashes (``max-steps = 40``; ``max_steps`` too), values
typed as TOML types them: numbers for numeric flags, ``true``/``false`` for switches (``no-progress = true``),
strings for the rest, lists for flags that repeat or take several values (``input = ["a.mp4", "b/"]``; one
string is a list of one). Required flags may come from the file. Flags given on the command line win, also
over the file's value for another flag of the same either-or group (``--fps`` over the file's ``every``).
A key that names no flag, or a value of the wrong type, is one line naming the key and the file (exit 2).
Beam pipeline options stay on the command line.

``parse(parser, argv, job)`` returns the namespace with ``args.settings``: what the job then records in its
output (config.json / summary.json) so a run can be repeated exactly: ``{"job", "argv", "config_file",
"flags"}``.
"""
import argparse
import os
import sys
import tomllib

from pipelines.errors import CadlError

OPTION = "--config"


def add_option(parser):
    """Give ``parser`` the --config option (shown in --help)."""
    parser.add_argument(OPTION, metavar="FILE.toml", default=None,
                        help="read flags from this TOML file: keys are flag names without dashes "
                             "(max-steps = 40); flags on the command line win")


def parse(parser, argv=None, job=None, known=False):
    """Parse ``argv`` (default sys.argv[1:]) with the file named by --config merged in; ``known``: like
    ``parse_known_args`` (returns ``(args, unknown)``). ``args.settings`` records the resolved flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    if path is not None:
        _apply(parser, path, _given(parser, argv))
    if known:
        args, unknown = parser.parse_known_args(argv)
    else:
        args, unknown = parser.parse_args(argv), []
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    args.settings = {"job": job or parser.prog.split()[-1], "argv": argv,
                     "config_file": os.path.abspath(path) if path else None, "flags": _jsonable(flags)}
    return (args, unknown) if known else args


def _config_path(argv):
    path = None
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word == OPTION and i + 1 < len(argv):
            path = argv[i + 1]
        elif word.startswith(OPTION + "="):
            path = word.split("=", 1)[1]
    return path


def _given(parser, argv):
    """The dests of the flags written on the command line (a long flag, or a unique abbreviation of one)."""
    strings = {s: a.dest for a in parser._actions for s in a.option_strings}
    given = set()
    for word in argv:
        name = word.split("=", 1)[0]
        if name in strings:
            given.add(strings[name])
        elif name.startswith("--") and parser.allow_abbrev:
            matches = {d for s, d in strings.items() if s.startswith(name)}
            given |= matches if len(matches) == 1 else set()
    return given


def _apply(parser, path, given):
    """Read ``path`` and make its values the parser's defaults; a flag it supplies is no longer required."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise CadlError(f"{path}: no such config file") from None
    except OSError as e:
        raise CadlError(f"{path}: cannot read the config file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise CadlError(f"{path}: not a valid TOML file ({e})") from None
    by_key = {}
    for action in parser._actions:
        if action.dest in ("help", "config") or isinstance(action, argparse._HelpAction):
            continue
        names = [s.lstrip("-") for s in action.option_strings] or [action.dest]
        for name in names + [action.dest]:
            by_key[name] = by_key[name.replace("-", "_")] = action
    values = {}
    for key, value in table.items():
        action = by_key.get(key)
        if action is None:
            raise CadlError(f"{path}: unknown key {key!r}: cadl {parser.prog.split()[-1]} has no --{key.replace('_', '-')}"
                            " (keys are flag names without dashes)")
        if action.dest in values:
            raise CadlError(f"{path}: key {key!r}: the same flag is given twice in the file")
        values[action.dest] = _typed(action, value, key, path)
    values = {dest: value for dest, value in values.items() if dest not in given}  # the command line wins
    for group in parser._mutually_exclusive_groups:  # the command line's choice in an either-or group wins
        dests = {a.dest for a in group._group_actions}
        if dests & given:
            for dest in dests - given:
                values.pop(dest, None)
        elif len(dests & set(values)) > 1:
            raise CadlError(f"{path}: keys {sorted(dests & set(values))} cannot be used together")
    for action in parser._actions:
        if action.dest in values:
            action.required = False
            if not action.option_strings and action.nargs == "+":
                action.nargs = "*"  # a positional the file fills: the command line may leave it out
    parser.set_defaults(**values)


def _typed(action, value, key, path):
    """``value`` as the flag would have parsed it, or a one-line error naming ``key`` and ``path``."""
    def wrong(expected):
        return CadlError(f"{path}: key {key!r}: expected {expected}, not {value!r}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value == isinstance(action, argparse._StoreTrueAction)
    if isinstance(action, argparse._StoreConstAction) or action.nargs == 0:
        raise wrong("nothing: this flag takes no value; leave it out or give it on the command line")
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many:
        items = value if isinstance(value, list) else [value]
        return [_one(action, item, key, path, wrong) for item in items]
    if isinstance(value, list) and action.type not in (None, str, int, float):
        value = ",".join(str(v) for v in value)  # a list for a comma-separated flag (widths = [64, 128])
    return _one(action, value, key, path, wrong)


def _one(action, value, key, path, wrong):
    kind = action.type
    if isinstance(value, (dict, list)) or (isinstance(value, bool) and kind is not None):
        raise wrong("a single value")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        value = float(value)
    elif kind in (None, str):
        if not isinstance(value, str):
            raise wrong("a string")
    else:
        try:
            value = kind(value if isinstance(value, str) else str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise CadlError(f"{path}: key {key!r}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise CadlError(f"{path}: key {key!r}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
