"""
The option tables of the documentation, written from the table in
L{smtpmx.options}: the reference docs/options.rst, the option tables of
README.rst and the commented example C{etc/smtpmx.toml}.

C{python -m smtpmx.optiondocs --write} rewrites the three files of a
checkout; C{--check} says which of them drifted from the table (the test
suite does the same); C{--rst}, C{--readme} and C{--toml} print one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, Optional, Sequence

from smtpmx.options import SECTIONS, Option, Section, plainText

# What example.org sets in etc/smtpmx.toml, beyond the defaults.
EXAMPLE_ORG: dict[str, Any] = {
    "listen": ("tcp:25", "tcp6:25:interface=\\:\\:"),
    "hostname": "mx.example.org",
    "domain": ("example.org",),
    "maildir-root": "/var/mail/smtpmx",
    "validator": ("policy:tcp:127.0.0.1:10023", "aliases:/etc/smtpmx/aliases", "mailbox"),
    "filter": ("rspamd",),
    "relay-network": ("127.0.0.0/8", "::1/128", "192.0.2.0/24"),
    "queue-dir": "/var/spool/smtpmx/queue",
}

# Why example.org sets what it sets, a comment above its value in
# etc/smtpmx.toml: the recommended setup of a small domain (README.rst,
# "Keeping spam out").
EXAMPLE_ORG_NOTES: dict[str, str] = {
    "validator": (
        "example.org: postgrey (Debian's package, on 127.0.0.1:10023) greylists"
        " first: a new sender's first attempt gets 450 4.7.1, a real server"
        " retries.  It comes before aliases and mailbox because the first verdict"
        " wins; once the sender has waited it has no opinion (DUNNO, PREPEND)."
    ),
    "filter": (
        "example.org: rspamd (Debian's package, its normal worker on"
        " 127.0.0.1:11333) judges each message.  Its reject is a 550 5.7.1, its"
        " soft reject and greylist a 451 4.7.1; add header and rewrite subject"
        " file the message in the Junk folder with X-Spam: Yes.  Dovecot shows the"
        " Maildir++ folder .Junk as the IMAP folder Junk (docs/storage.rst)."
    ),
}

# Another way example.org may set an option it leaves at its default: a
# note, then the lines to set, all commented out below the default (the
# lines indented, so that they are not taken for the default).
EXAMPLE_ORG_ALTERNATIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "delivery": (
        "example.org may hand its mail to Dovecot over LMTP instead of filing it"
        " into Maildirs (README.rst, \"Handing mail to Dovecot\";"
        " etc/dovecot-smtpmx.conf), with the lmtp validator asking Dovecot at"
        " RCPT in place of mailbox, which has no opinion on an LMTP domain:",
        (
            'delivery = ["lmtp:unix:/run/dovecot/lmtp"]',
            'validator = ["policy:tcp:127.0.0.1:10023", "aliases:/etc/smtpmx/aliases",',
            '             "lmtp"]',
        ),
    ),
}

README_START = ".. options-start: written from smtpmx/options.py by python -m smtpmx.optiondocs --write"
README_END = ".. options-end"

GENERATED = (
    "This file is written from the table in smtpmx/options.py by\n"
    "python -m smtpmx.optiondocs --write; edit the table, not this file."
)


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """
    C{text} in lines of at most C{width} characters, each starting with
    C{indent}, never broken inside a word or at a hyphen (C{--tls-key}).
    """
    return textwrap.wrap(
        text, width, initial_indent=indent, subsequent_indent=indent,
        break_long_words=False, break_on_hyphens=False,
    )


def _literal(text: str) -> str:
    """
    C{text} as a reStructuredText inline literal.
    """
    return f"``{text}``"


def defaultInProse(option: Option) -> str:
    """
    The default, marked up for reStructuredText: values as literals,
    words as they are.
    """
    if option.defaultText is not None or option.valueType is None:
        return option.showDefault()
    if option.default is None or option.default == ():
        return "none"
    if option.repeatable:
        return ", ".join(_literal(option.valueType.show(v)) for v in option.default)
    return _literal(option.valueType.show(option.default))


def synopsis(option: Option) -> str:
    """
    C{--name METAVAR}, as written on the command line.
    """
    return f"{option.flag} {option.metavar}" if option.metavar else option.flag


def optionsReference(sections: Sequence[Section] = SECTIONS) -> str:
    """
    docs/options.rst: every option with its meaning, TOML key, type and
    default.
    """
    out = [
        "=======",
        "Options",
        "=======",
        "",
        ".. " + GENERATED.replace("\n", "\n   "),
        "",
        "Every option is a flag of ``twistd smtpmx`` and, but for those of the",
        "command line alone, a key of the TOML file given with ``--config``.  A",
        "flag overrides the file; a repeatable option given on the command line",
        "forms the whole list, replacing the file's list and the default.",
        "``twistd smtpmx --help`` lists the flags with their defaults, and",
        "``etc/smtpmx.toml`` is an example file with every key.",
        "",
        "In the file, a key is the option's name without the dashes",
        "(``max-message-size = 1000``); ``_`` may be written for ``-``, and a",
        "repeatable option takes a list (or a single string for a list of one)",
        "and may also be spelled in the plural.  A key that is not an option is",
        "an error.  Relative paths are taken from the directory twistd runs in.",
        "",
        "A bad value, an unreadable file, an unknown validator or one that fails",
        "to load stops start-up with one line naming the option and the problem,",
        "and exit status 1.",
        "",
        "Each option below gives the attribute of the configuration object",
        "(``config``, as validators see it) that holds its checked value.",
    ]
    for section in sections:
        out += ["", "", section.title, "=" * len(section.title), "", section.intro]
        for option in section.options:
            out += ["", _literal(synopsis(option))]
            meaning = option.help + ("  Repeatable." if option.repeatable else "")
            out += _wrap(meaning, 76, "    ")
            if option.details:
                out += [""] + _wrap(option.details, 76, "    ")
            fields = []
            if not option.commandLineOnly:
                keys = ", ".join(_literal(k) for k in (option.name, *option.fileAliases))
                fields.append(("TOML key", keys))
            if option.valueType is not None:
                kind = option.valueType.description
                if option.repeatable:
                    kind += "; a list in the file"
                fields.append(("Type", kind))
            if option.metavar or option.valueType is not None:
                fields.append(("Default", defaultInProse(option)))
            if option.field is not None:
                fields.append(("Attribute", _literal(f"config.{option.field}")))
            if fields:
                out.append("")
                out += [f"    :{name}: {value}" for name, value in fields]
    return "\n".join(out) + "\n"


def readmeTables(sections: Sequence[Section] = SECTIONS) -> str:
    """
    The option tables of README.rst, between their markers: each
    option's flag, meaning and default, a table per section.
    """
    out = [README_START, ""]
    for section in sections:
        out += [f"*{section.title}.*  {section.intro}", "", ".. list-table::",
                "   :header-rows: 1", "   :widths: 30 50 20", "",
                "   * - option", "     - meaning", "     - default"]
        for option in section.options:
            meaning = option.help + ("  Repeatable." if option.repeatable else "")
            default = defaultInProse(option) if (option.metavar or option.valueType) else ""
            out += [f"   * - {_literal(synopsis(option))}", f"     - {meaning}",
                    f"     - {default}".rstrip()]
        out.append("")
    out.append(README_END)
    return "\n".join(out) + "\n"


def replaceReadmeTables(readme: str, tables: str) -> str:
    """
    C{readme} with the text between its option markers replaced by
    C{tables}.

    @raise ValueError: the markers are missing.
    """
    start = readme.index(README_START)
    end = readme.index(README_END, start) + len(README_END) + 1
    return readme[:start] + tables + readme[end:]


def tomlValue(value: Any) -> str:
    """
    A value written in TOML.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(tomlValue(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def tomlDefault(option: Option) -> str:
    """
    The option's default as a TOML value, or its description in angle
    brackets when it has no value (C{"<the host's FQDN>"}).
    """
    assert option.valueType is not None
    if option.defaultText is not None or option.default is None:
        return tomlValue(f"<{option.showDefault()}>")
    show = option.valueType.show
    if option.repeatable:
        return tomlValue([show(v) if isinstance(v, str) else v for v in option.default])
    if isinstance(option.default, str):
        return tomlValue(show(option.default))
    if isinstance(option.default, int) and not isinstance(option.default, bool):
        if show(option.default) != str(option.default):
            # An octal mode: 0o600 is 384 in TOML, clearer as the text "0600".
            return tomlValue(show(option.default))
    return tomlValue(option.default)


def _comment(text: str) -> list[str]:
    """
    C{text} as wrapped TOML comment lines.
    """
    return _wrap(plainText(text), 78, "# ")


def exampleFile(
    sections: Sequence[Section] = SECTIONS,
    example: Optional[dict[str, Any]] = None,
    notes: Optional[dict[str, str]] = None,
    alternatives: Optional[dict[str, tuple[str, tuple[str, ...]]]] = None,
) -> str:
    """
    C{etc/smtpmx.toml}: every key of the file with its help and its
    default, commented out, and the values of C{example} set, each below
    its note in C{notes}, if any.  An option C{example} leaves at its
    default may have, in C{alternatives}, a note and the lines another
    setup would set, commented out below the default.
    """
    if example is None:
        example = EXAMPLE_ORG
        notes = EXAMPLE_ORG_NOTES if notes is None else notes
        alternatives = EXAMPLE_ORG_ALTERNATIVES if alternatives is None else alternatives
    notes = {} if notes is None else notes
    alternatives = {} if alternatives is None else alternatives
    out = [
        "# smtpmx configuration, for a small domain (example.org).",
        "#",
        "# Pass it with:  twistd -n smtpmx --config /etc/smtpmx/smtpmx.toml",
        "#",
        "# Keys are named like the command-line options, without the dashes in",
        "# front (max-message-size = ...).  \"_\" may be written for \"-\"",
        "# (max_message_size), and a repeatable option may also be spelled in the",
        "# plural (domains = [...]).  A key that is not an option is an error.",
        "#",
        "# A repeatable option takes a list, or a single string for a list of one.",
        "# An option given on the command line overrides this file; a repeatable",
        "# option given on the command line replaces the whole list.",
        "#",
        "# Every option below shows its default, commented out, then (where it",
        "# makes sense) the value for example.org.  Relative paths are taken",
        "# from the current directory of twistd (systemd: WorkingDirectory=).",
        "# docs/options.rst describes every option.",
        "#",
    ] + ["# " + line for line in GENERATED.splitlines()]
    for section in sections:
        options = [o for o in section.options if not o.commandLineOnly]
        if not options:
            continue
        out += ["", f"# --- {section.title} ".ljust(77, "-")]
        for option in options:
            text = option.help + ("  Repeatable." if option.repeatable else "")
            if option.details:
                text += "  " + option.details
            out += [""] + _comment(text)
            out.append(f"# {option.name} = {tomlDefault(option)}")
            if option.name in example:
                if option.name in notes:
                    out += _comment(notes[option.name])
                out.append(f"{option.name} = {tomlValue(example[option.name])}")
            elif option.name in alternatives:
                note, lines = alternatives[option.name]
                out += _comment(note) + [f"#     {line}" for line in lines]
    return "\n".join(out) + "\n"


def checkoutRoot() -> str:
    """
    The checkout this module is in (the directory above C{smtpmx/}).
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expectedFiles(root: str) -> dict[str, str]:
    """
    The generated files of the checkout at C{root}, by path, with the
    content they should have.
    """
    readmePath = os.path.join(root, "README.rst")
    with open(readmePath, encoding="utf-8") as f:
        readme = f.read()
    return {
        os.path.join(root, "docs", "options.rst"): optionsReference(),
        os.path.join(root, "etc", "smtpmx.toml"): exampleFile(),
        readmePath: replaceReadmeTables(readme, readmeTables()),
    }


def driftedFiles(root: str) -> list[str]:
    """
    The paths of the files of C{root} that do not say what the table says.
    """
    drifted = []
    for path, expected in expectedFiles(root).items():
        try:
            with open(path, encoding="utf-8") as f:
                actual = f.read()
        except FileNotFoundError:
            actual = None
        if actual != expected:
            drifted.append(path)
    return drifted


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The command line: print one file, write them all, or check them.
    """
    parser = argparse.ArgumentParser(
        prog="python -m smtpmx.optiondocs", description=__doc__.strip().splitlines()[0]
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--rst", action="store_true", help="print docs/options.rst")
    action.add_argument("--readme", action="store_true", help="print README.rst's tables")
    action.add_argument("--toml", action="store_true", help="print etc/smtpmx.toml")
    action.add_argument("--write", action="store_true", help="rewrite the three files")
    action.add_argument("--check", action="store_true", help="exit 1 if one drifted")
    parser.add_argument("--root", default=checkoutRoot(), help="the checkout")
    args = parser.parse_args(argv)
    if args.rst:
        sys.stdout.write(optionsReference())
    elif args.readme:
        sys.stdout.write(readmeTables())
    elif args.toml:
        sys.stdout.write(exampleFile())
    elif args.write:
        for path, text in expectedFiles(args.root).items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}")
    else:
        drifted = driftedFiles(args.root)
        for path in drifted:
            print(f"{path} is out of date: python -m smtpmx.optiondocs --write", file=sys.stderr)
        return 1 if drifted else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
