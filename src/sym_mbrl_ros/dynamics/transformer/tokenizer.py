"""Prefix-notation tokens for expressions of the world-model grammar, and back.

The transformer writes an expression as a sequence of tokens in prefix (Polish) notation, as in
Kamienny et al. (2022). The vocabulary only holds operators that the grammar of DESIGN.md can
express, so every complete sequence converts into a tree that :func:`parse_expression` accepts:

* binary: ``add sub mul div pow`` (``+ - * / **``);
* unary: ``neg`` (unary minus), ``inv`` (``1/a``), ``pow2`` and ``pow3`` (``a**2``, ``a**3``),
  and the functions ``sin cos tan exp log sqrt abs tanh``;
* variables ``x0 .. x{max_inputs-1}`` (the backend maps them to coordinate names);
* constants as three tokens, sign, mantissa and exponent: ``-0.0375`` is
  ``- M375 E-4`` (value = sign * mantissa * 10**exponent, ``mantissa_digits`` significant
  digits). Zero is ``+ M0 E0``.

The paper's ``arcsin arccos arctan clip trunc`` (and ``sign``) have no counterpart in the grammar
and are left out of the vocabulary altogether rather than rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..expression import BinOp, Call, Name, Neg, Node, Num

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
FUNCTION_TOKENS = ("sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh")
UNARY = ("neg", "inv", "pow2", "pow3") + FUNCTION_TOKENS
_OP_TOKEN = {v: k for k, v in BINARY.items()}


class TokenError(ValueError):
    """A token sequence that is not one complete prefix expression."""


@dataclass(frozen=True)
class Tokenizer:
    """The vocabulary and the conversions tree <-> prefix tokens <-> ids."""

    max_inputs: int = 8
    """Number of variable tokens ``x0 ..``."""
    mantissa_digits: int = 3
    """Significant digits of a constant."""
    min_exponent: int = -10
    max_exponent: int = 6
    """Range of the exponent token of a constant (mantissa read as an integer)."""
    vocab: tuple[str, ...] = field(init=False, repr=False, compare=False)
    index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        lo = 10 ** (self.mantissa_digits - 1)
        words = [PAD, BOS, EOS, *BINARY, *UNARY]
        words += [f"x{k}" for k in range(self.max_inputs)]
        words += ["+", "-", "M0"] + [f"M{m}" for m in range(lo, 10 * lo)]
        words += [f"E{e}" for e in range(self.min_exponent, self.max_exponent + 1)]
        object.__setattr__(self, "vocab", tuple(words))
        object.__setattr__(self, "index", {w: k for k, w in enumerate(words)})

    def to_dict(self) -> dict:
        """The settings, for a weights file's config."""
        return {
            "max_inputs": self.max_inputs,
            "mantissa_digits": self.mantissa_digits,
            "min_exponent": self.min_exponent,
            "max_exponent": self.max_exponent,
        }

    @property
    def size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    @property
    def bos_id(self) -> int:
        return self.index[BOS]

    @property
    def eos_id(self) -> int:
        return self.index[EOS]

    # --- constants -----------------------------------------------------------------------------

    def constant_tokens(self, value: float) -> list[str]:
        """``value`` rounded to ``mantissa_digits`` significant digits, as three tokens."""
        value = float(value)
        if not math.isfinite(value):
            raise TokenError(f"constant {value} is not finite")
        sign = "-" if value < 0 else "+"
        if value == 0.0:
            return ["+", "M0", "E0"]
        p = self.mantissa_digits
        exponent = math.floor(math.log10(abs(value))) - (p - 1)
        mantissa = round(abs(value) / 10.0**exponent)
        if mantissa >= 10**p:  # 9.996 rounds up to 10.0
            mantissa //= 10
            exponent += 1
        if exponent < self.min_exponent:
            return ["+", "M0", "E0"]
        if exponent > self.max_exponent:
            raise TokenError(f"constant {value:g} is too large for the vocabulary")
        return [sign, f"M{mantissa}", f"E{exponent}"]

    def round_constant(self, value: float) -> float:
        """The value a constant has after a trip through its tokens."""
        return _constant_value(self.constant_tokens(value))

    # --- trees <-> tokens ----------------------------------------------------------------------

    def encode(self, tree: Node, variables: Sequence[str]) -> list[str]:
        """Prefix tokens of ``tree``; ``variables[k]`` becomes ``xk``."""
        slot = {name: f"x{k}" for k, name in enumerate(variables)}
        if len(slot) > self.max_inputs:
            raise TokenError(f"at most {self.max_inputs} variables, got {len(slot)}")
        out: list[str] = []
        stack: list[Node] = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, Num):
                out += self.constant_tokens(node.value)
            elif isinstance(node, Name):
                if node.name not in slot:
                    raise TokenError(f"name {node.name!r} is not among the variables")
                out.append(slot[node.name])
            elif isinstance(node, Neg):
                out.append("neg")
                stack.append(node.arg)
            elif isinstance(node, Call):
                out.append(node.func)
                stack.append(node.arg)
            elif node.op == "**" and node.right in (Num(2.0), Num(3.0)):
                out.append("pow2" if node.right == Num(2.0) else "pow3")
                stack.append(node.left)
            elif node.op == "/" and node.left == Num(1.0):
                out.append("inv")
                stack.append(node.right)
            else:
                out.append(_OP_TOKEN[node.op])
                stack += [node.right, node.left]
        return out

    def decode(self, tokens: Sequence[str], variables: Sequence[str]) -> Node:
        """The tree of one complete prefix expression; :class:`TokenError` otherwise."""
        pos = 0

        def take() -> str:
            nonlocal pos
            if pos >= len(tokens):
                raise TokenError("the token sequence ends inside an expression")
            tok = tokens[pos]
            pos += 1
            return tok

        # iterative prefix reader: a stack of (operator, children so far)
        pending: list[tuple[str, list[Node]]] = []
        result: Node | None = None
        while result is None:
            tok = take()
            node: Node | None = None
            if tok in BINARY or tok in UNARY:
                pending.append((tok, []))
                continue
            if tok in ("+", "-"):
                node = Num(_constant_value([tok, take(), take()]))
            elif tok.startswith("x") and tok[1:].isdigit():
                k = int(tok[1:])
                if k >= len(variables):
                    raise TokenError(f"variable {tok} but only {len(variables)} inputs")
                node = Name(variables[k])
            else:
                raise TokenError(f"unexpected token {tok!r}")
            while node is not None:
                if not pending:
                    result = node
                    break
                op, kids = pending[-1]
                kids.append(node)
                if len(kids) < (2 if op in BINARY else 1):
                    node = None
                    break
                pending.pop()
                node = _build(op, kids)
        if pos != len(tokens):
            raise TokenError("tokens left over after a complete expression")
        return result

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """Token ids; an unknown token is a :class:`TokenError`."""
        try:
            return [self.index[t] for t in tokens]
        except KeyError as exc:
            raise TokenError(f"token {exc.args[0]!r} is not in the vocabulary") from None

    def words(self, ids: Sequence[int]) -> list[str]:
        """Tokens of ids, stopping at the end token and skipping padding and the start token."""
        out = []
        for i in ids:
            w = self.vocab[int(i)]
            if w == EOS:
                break
            if w not in (PAD, BOS):
                out.append(w)
        return out

    def arity_table(self) -> list[int]:
        """Per token id: how many sub-expressions it opens minus one (-1 for a leaf).

        A prefix sequence is complete when the running sum of ``1 + arity`` reaches zero; the
        decoders use this to know which sequences are finished. Constants count as one leaf
        through their sign token; mantissa and exponent tokens count 0.
        """
        table = []
        for w in self.vocab:
            if w in BINARY:
                table.append(1)
            elif w in UNARY:
                table.append(0)
            elif w in ("+", "-") or (w.startswith("x") and w[1:].isdigit()):
                table.append(-1)
            else:
                table.append(0)
        return table


def _constant_value(tokens: Sequence[str]) -> float:
    sign, mant, expo = tokens
    if sign not in ("+", "-") or not mant.startswith("M") or not expo.startswith("E"):
        raise TokenError(f"malformed constant {' '.join(tokens)!r}")
    try:
        value = int(mant[1:]) * 10.0 ** int(expo[1:])
    except ValueError:
        raise TokenError(f"malformed constant {' '.join(tokens)!r}") from None
    # round off the binary noise of mantissa * 10**e (0.0375 rather than 0.037500000000000006)
    value = float(f"{value:.12g}")
    return -value if sign == "-" else value


def _build(op: str, kids: list[Node]) -> Node:
    if op in BINARY:
        return BinOp(BINARY[op], kids[0], kids[1])
    (a,) = kids
    if op == "neg":
        return Neg(a)
    if op == "inv":
        return BinOp("/", Num(1.0), a)
    if op == "pow2":
        return BinOp("**", a, Num(2.0))
    if op == "pow3":
        return BinOp("**", a, Num(3.0))
    return Call(op, a)
