"""A real labelled text task built offline from Debian's man pages: what a page says -> its section.

Every Debian system ships thousands of man pages, written by others, and each page's
section is a fact (a page is a user command, a system call, a library function...),
so the labels are clean, the classes are naturally imbalanced (most pages are user
commands) and some boundaries are genuinely ambiguous (a tool and the library call it
wraps are described alike). One row per page: the NAME line's description plus the
first sentence or two of DESCRIPTION, parsed from the gzipped roff with regexes
(both the man and the mdoc macro packages); `.so` redirects and symlinked aliases are
skipped, and so are pages whose text another page already has.

`ManCorpus` parses pages lazily in a seeded shuffled order, so that a benchmark asking
for 2,300 rows reads about 2,300 pages, not all of them, and keeps the natural mix.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MAN_ROOT = Path("/usr/share/man")
SECTIONS = {
    "1": "user command",
    "2": "system call",
    "3": "library function",
    "5": "file format",
    "7": "overview",
    "8": "admin command",
}
# The Google Cloud SDK ships 16,000 generated pages, one per `gcloud` subcommand, built from one template:
# kept, one tool's boilerplate would be 95% of the user commands and most of the corpus.
EXCLUDE = re.compile(r"^gcloud[_.]")
MAX_CHARS = 320  # rows stay short: a classification prompt, not a document
MIN_WORDS = 5

# roff escapes: named glyphs first, then font/size switches, then whatever is left.
_GLYPHS = {
    "aq": "'", "lq": '"', "rq": '"', "oq": "'", "cq": "'", "dq": '"', "em": "--", "en": "-", "hy": "-",
    "mi": "-", "bu": "*", "co": "(c)", "rg": "(R)", "tm": "(TM)", "ga": "`", "ti": "~", "ha": "^",
    "rs": "\\", "sl": "/", "bv": "|", "ba": "|", "Fo": "<<", "Fc": ">>", "fo": "<", "fc": ">", "mu": "x",
    "<=": "<=", ">=": ">=", "->": "->", "<-": "<-", "pl": "+", "eq": "=", "ul": "_", "de": " degrees",
}
_ESCAPES = [
    (re.compile(r'\\".*$'), ""),                                    # comment to end of line
    (re.compile(r"\\\*?\((\S\S)"), lambda m: _GLYPHS.get(m.group(1), "")),   # \(aq  \*(lq
    (re.compile(r"\\\*?\[([^\]]*)\]"), lambda m: _GLYPHS.get(m.group(1), "")),  # \[aq]  \*[lq]
    (re.compile(r"\\f(\(..|\[[^\]]*\]|.)"), ""),                    # \fB \fR \f(CW \f[I]
    (re.compile(r"\\s[+-]?(\d|\(\d\d|\[\d+\])"), ""),               # \s-1 \s0
    (re.compile(r"\\[kwhvlLnDxHXoSzbN]'[^']*'"), ""),               # \w'...' and friends
    (re.compile(r"\\n(\(..|\[[^\]]*\]|.)"), ""),                    # number registers
    (re.compile(r"\\\*."), ""),                                     # \*R and other strings
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[e\\]"), "\x00"),                             # a literal backslash, restored last
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[&|^%c:)/,!{}]"), ""),
    (re.compile(r"\\(.)"), r"\1"),
]
_SO = re.compile(r"^\.so\s", re.M)
_SECTION = re.compile(r'^\.S[Hh]\s+"?([^"\n]*?)"?\s*$')
_MACRO = re.compile(r"^[.'](\S+)\s*(.*)$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]\"'][.!?])\s+(?=[A-Z(\"'])")
# man macros that carry text as arguments; the alternating font ones join their arguments without spaces.
_TEXT_MACROS = {"B", "I", "SM", "SB", "Nm", "Ar", "Pa", "Em", "Sy", "Dv", "Va", "Ev", "Li", "Ql", "Cm", "Ic", "Ad",
                "An", "Lb", "Ms", "Tn", "Ux", "St", "Er", "Dq", "Sq", "Pq", "Do", "Dc", "Qq", "Ux", "Bx", "Nx",
                "Fx", "Ox", "At", "Dl", "Fa", "Vt", "Ft", "Ot", "Mt", "Lk", "Fl"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_MDOC_PUNCT = {".", ",", ";", ":", "(", ")", "[", "]", "?", "!"}


def unescape(text: str) -> str:
    """Plain text from a line of roff: escapes, font switches and comments removed."""
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text.replace("\x00", "\\")


def _split_args(args: str) -> list[str]:
    return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
            for a in re.findall(r'"[^"]*"|\S+', args)]


def _macro_text(name: str, args: str, page: str) -> str | None:
    """The text a macro line contributes to the prose, or None for layout macros."""
    parts = _split_args(args)
    if name in _ALTERNATING:
        return "".join(parts)
    if name == "Nm":
        return " ".join([page if not parts or parts[0] in _MDOC_PUNCT else parts[0], *parts[1:]])
    if name == "Xr" and len(parts) >= 2:
        return f"{parts[0]}({parts[1]})" + "".join(parts[2:])
    if name == "Fn" and parts:
        return f"{parts[0]}()" + "".join(p for p in parts[1:] if p in _MDOC_PUNCT)
    if name == "Fl":
        return " ".join(["-" + parts[0] if parts else "-", *parts[1:]])
    if name in _TEXT_MACROS:
        return " ".join(parts)
    return None


def _join_mdoc(words: list[str]) -> str:
    text = " ".join(words)
    return re.sub(r"\s+([.,;:)\]?!])", r"\1", re.sub(r"([(\[])\s+", r"\1", text))


def _sections(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        m = _SECTION.match(line)
        if m:
            current = unescape(m.group(1)).strip().upper()
            out.setdefault(current, [])
        elif current is not None:
            out[current].append(line)
    return out


def _prose(lines: list[str], page: str, *, stop_at_list: bool = True) -> str:
    """The running text of a section up to its first list, display or subsection."""
    words: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        m = _MACRO.match(line)
        if m is None:
            words.append(unescape(line).strip())
            continue
        name, args = m.group(1), m.group(2)
        if name.startswith('\\"'):
            continue
        if stop_at_list and name in ("TP", "IP", "Bl", "nf", "EX", "Bd", "SS", "Ss", "TS", "RS") and words:
            break
        text = _macro_text(name, args, page)
        if text is not None:
            words.append(unescape(text).strip())
    return _join_mdoc([w for w in words if w])


def _name_description(lines: list[str], page: str) -> str | None:
    nd = [m.group(2) for m in map(_MACRO.match, lines) if m and m.group(1) == "Nd"]
    if nd:
        return unescape(" ".join(nd)).strip()
    text = _prose(lines, page, stop_at_list=False)
    m = re.search(r"\s+-+\s+|\s+\\-\s+|\s-(?=\S)", text)
    return text[m.end():].strip() if m else None


def first_sentences(text: str, max_chars: int = MAX_CHARS, min_words: int = 12) -> str:
    """The first sentence, and the next ones while the excerpt is under `min_words` words; cut at `max_chars`."""
    out = ""
    for sentence in _SENTENCE_END.split(text):
        out = f"{out} {sentence}".strip()
        if len(out.split()) >= min_words:
            break
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return out


def parse_page(path: Path) -> str | None:
    """The row text of one gzipped man page, or None (a redirect, no NAME description, too short)."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError):
        return None
    source = raw.decode("utf-8", errors="replace")
    body = [line for line in source.splitlines() if not line.startswith(('.\\"', "'\\\"", '.\\\\"'))]
    if not body or _SO.match("\n".join(body[:3]).strip()):
        return None
    page = path.name.split(".")[0]
    sections = _sections(body)
    name_lines = sections.get("NAME") or sections.get("NAME ")
    if not name_lines:
        return None
    summary = _name_description(name_lines, page)
    if not summary:
        return None
    summary = summary.rstrip(" .")
    description = next((v for k, v in sections.items() if k.startswith("DESCRIPTION")), None)
    detail = first_sentences(_prose(description, page)) if description else ""
    text = " ".join(f"{summary[:1].upper()}{summary[1:]}. {detail}".split())
    text = text.replace("\ufffd", "").strip()
    return text if len(text.split()) >= MIN_WORDS else None


def page_files(root: Path = MAN_ROOT) -> list[tuple[Path, str]]:
    """(page, label) for every regular English page of the six sections, in a fixed order (symlinks are aliases)."""
    files = []
    for number, label in SECTIONS.items():
        folder = root / f"man{number}"
        if folder.is_dir():
            files += [(p, label) for p in sorted(folder.iterdir())
                      if p.name.endswith(".gz") and p.is_file() and not p.is_symlink() and not EXCLUDE.match(p.name)]
    return files


class ManCorpus:
    """Rows {"text", "label"} in a seeded random order of the pages, parsed on demand, no text twice."""

    def __init__(self, seed: int, root: Path = MAN_ROOT):
        files = page_files(root)
        order = np.random.default_rng(seed).permutation(len(files))
        self.files = [files[i] for i in order]
        self.pages_read = 0
        self.rows: list[dict[str, str]] = []
        self._seen: set[str] = set()

    def files_sorted(self) -> list[Path]:
        """The pages this corpus draws from, in a fixed order (their names identify the corpus)."""
        return sorted(p for p, _ in self.files)

    def __iter__(self) -> Iterator[dict[str, str]]:
        """Every row so far, then new ones as pages are parsed."""
        i = 0
        while True:
            while i >= len(self.rows):
                if not self._parse_next():
                    return
            yield self.rows[i]
            i += 1

    def take(self, n: int) -> list[dict[str, str]]:
        """The first n rows of the order (fewer when the pages run out)."""
        out = []
        for row in self:
            if len(out) == n:
                break
            out.append(row)
        return out

    def _parse_next(self) -> bool:
        while self.pages_read < len(self.files):
            path, label = self.files[self.pages_read]
            self.pages_read += 1
            text = parse_page(path)
            key = " ".join(text.lower().split()) if text else None
            if key and key not in self._seen:
                self._seen.add(key)
                self.rows.append({"text": text, "label": label})
                return True
        return False


def available(root: Path = MAN_ROOT) -> bool:
    return any((root / f"man{n}").is_dir() for n in SECTIONS)
