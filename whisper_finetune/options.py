"""Options declared once: each field of a config dataclass carries its flag's type, default and help.

A script's argparse parser, its ``-h`` text and the documentation's flag tables are all generated from the
same fields (as transformers' ``HfArgumentParser`` does; ours keeps one spelling per flag, tuples for
frozen configs and ``-h`` with defaults, which that parser's ``--no_*`` and hyphen twins would double).

Conventions every script shares:

* a ``bool`` option takes ``True``/``False`` in any case (also 1/0, yes/no); the bare flag means True;
* an ``Optional`` option takes ``None`` (any case) for "not set";
* a ``Tuple[X, ...]`` option takes one or more values;
* a field whose type is itself an options dataclass (``decoding: DecodingOptions``) contributes its
  fields as an argument group;
* a field declared with ``cli=False`` is set by the script, not by a flag.

Library code never sees the parser: scripts call :func:`parse`, which returns the config instance.
"""
import argparse
import dataclasses
import typing
from typing import Any, Optional, Tuple

TRUE_WORDS = ("true", "1", "yes", "y")
FALSE_WORDS = ("false", "0", "no", "n")
REQUIRED = "(required)"


def option(default=dataclasses.MISSING, help="", *, flag=None, choices=None, parse=None, metavar=None, group=None,
           cli=True, default_text=None, positional=False):
    """A dataclass field that is also a command-line flag.

    ``flag``: the flag's name when it differs from the field's; ``choices``: the accepted values;
    ``parse``: a converter for values argparse cannot derive from the annotation; ``group``: the
    ``-h`` section; ``default_text``: how to show a default computed later (e.g. "by model size");
    ``positional``: an argument written without ``--`` (the result folders of evaluate/report.py).
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar, "group": group,
                "cli": cli, "default_text": default_text, "positional": positional}
    return dataclasses.field(default=default, metadata=metadata)


def parse_bool(value):
    """``True``/``False`` in any case, 1/0, yes/no."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _none_or(convert):
    def parse_optional(value):
        return None if str(value).strip().lower() == "none" else convert(value)

    parse_optional.__name__ = getattr(convert, "__name__", "value")  # argparse names it in its errors
    return parse_optional


@dataclasses.dataclass(frozen=True)
class Flag:
    """One generated flag: where its value goes and how argparse reads it."""

    name: str  # without the leading --
    path: Tuple[str, ...]  # field names from the top config down to this field
    kwargs: dict
    required: bool
    default: Any
    help: str
    default_text: Optional[str]
    choices: Optional[tuple]
    is_bool: bool
    nargs: Optional[str]
    group: Optional[str]
    positional: bool = False

    @property
    def usage(self):
        """How the flag is written: ``--name`` (``NAME`` for a positional argument)."""
        return (self.kwargs.get("metavar") or self.name.upper()) if self.positional else f"--{self.name}"


def _is_options_class(kind):
    return dataclasses.is_dataclass(kind) and isinstance(kind, type)


def _unwrap(annotation):
    """``(base type, optional, sequence)`` of an annotation: Optional[X] -> X, Tuple[X, ...] -> X."""
    optional = False
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    sequence = typing.get_origin(annotation) in (tuple, list)
    if sequence:
        annotation = typing.get_args(annotation)[0]
    return annotation, optional, sequence


def flags_of(cls, exclude=(), defaults=None, required=(), _path=()) -> list:
    """The :class:`Flag` of every command-line field of ``cls`` (nested option classes included).

    ``exclude``: fields this script has no flag for; ``defaults``: other defaults for this script;
    ``required``: fields this script requires although the dataclass gives them a default.
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    flags = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        kind = hints[field.name]
        if _is_options_class(kind):
            flags += flags_of(kind, exclude, defaults, required, _path + (field.name,))
            continue
        if not meta.get("cli", False) or field.name in exclude:
            continue
        base, optional, sequence = _unwrap(kind)
        is_bool = base is bool
        convert = meta["parse"] or (parse_bool if is_bool else base if base in (int, float) else str)
        if optional:
            convert = _none_or(convert)
        default = defaults.get(field.name, field.default)
        is_required = default is dataclasses.MISSING or field.name in required
        kwargs = {"type": convert, "help": meta["help"], "dest": field.name}
        if meta["choices"]:
            kwargs["choices"] = tuple(meta["choices"])
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        nargs = "+" if sequence else "?" if is_bool else None
        if nargs:
            kwargs["nargs"] = nargs
        if is_bool:
            kwargs.update(const=True, metavar=meta["metavar"] or "True|False")
        positional = meta.get("positional", False)
        if positional:
            del kwargs["dest"]  # argparse takes a positional's destination from its name
        elif is_required:
            kwargs["required"] = True
        if not is_required:
            kwargs["default"] = default
        flags.append(Flag(meta["flag"] or field.name, _path + (field.name,), kwargs, is_required, default,
                          meta["help"], meta["default_text"], kwargs.get("choices"), is_bool, nargs, meta["group"],
                          positional))
    return flags


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows each default (or how it is chosen)."""


def _help_text(flag):
    text = flag.help.replace("%", "%%")
    if flag.required:
        return text + " (required)"
    shown = flag.default_text or _show(flag.default)
    return f"{text} (default: {shown})"


def _show(value):
    if value == "":
        return '""'
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def build_parser(cls, description, epilog=None, exclude=(), defaults=None, required=()) -> argparse.ArgumentParser:
    """The parser of every command-line field of ``cls`` plus ``--verbose``, grouped as declared."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_Formatter)
    groups = {}
    for flag in flags_of(cls, exclude, defaults, required) + flags_of(ScriptOptions):
        name = flag.group
        if name and name not in groups:
            groups[name] = parser.add_argument_group(name)
        target = groups[name] if name else parser
        target.add_argument(flag.name if flag.positional else f"--{flag.name}",
                            **{**flag.kwargs, "help": _help_text(flag)})
    return parser


def config_from_namespace(cls, namespace, exclude=(), fixed=None):
    """Build ``cls`` (nested option classes too) from parsed flags; lists become tuples."""
    fixed = fixed or {}
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if field.name in fixed:
            values[field.name] = fixed[field.name]
        elif _is_options_class(kind):
            values[field.name] = config_from_namespace(kind, namespace, exclude, fixed)
        elif field.metadata.get("cli") and field.name not in exclude and hasattr(namespace, field.name):
            value = getattr(namespace, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ScriptOptions:
    """Flags every script has, which configure the script rather than the library."""

    verbose: bool = option(False, "show library warnings and debug logging")


def parse(cls, doc, argv=None, exclude=(), defaults=None, fixed=None, required=()):
    """Parse ``argv`` into ``(cls instance, ScriptOptions)``; ``doc``'s first paragraph is the description.

    ``fixed`` sets fields (at any depth) that the script decides, e.g. ``backend="jax"``.
    """
    paragraphs = doc.strip("\n").split("\n\n")
    parser = build_parser(cls, paragraphs[0], "\n\n".join(paragraphs[1:]) or None, exclude, defaults, required)
    namespace = parser.parse_args(argv)
    script = ScriptOptions(verbose=namespace.verbose)
    return config_from_namespace(cls, namespace, exclude, fixed), script


def markdown_table(cls, exclude=(), defaults=None, required=(), only=None) -> str:
    """The Markdown table of ``cls``'s flags for docs/flag_tables.py (``only``: these fields, in this order)."""
    flags = flags_of(cls, exclude, defaults, required) + flags_of(ScriptOptions)
    if only:
        by_field = {f.path[-1]: f for f in flags}
        flags = [by_field[name] for name in only]
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for flag in flags:
        usage = f"`{flag.usage}`" + (" ..." if flag.nargs == "+" else "")
        default = REQUIRED if flag.required else flag.default_text or f"`{_show(flag.default)}`"
        meaning = flag.help + (f" (one of: {', '.join(map(str, flag.choices))})" if flag.choices else "")
        meaning = meaning.replace("|", "&#124;").replace("<", "&lt;")  # Markdown would read <model> as a tag
        rows.append(f"| {usage} | {default} | {meaning} |")
    return "\n".join(rows)

