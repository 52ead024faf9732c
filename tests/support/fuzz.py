"""A seeded generator of malformed scoring requests, and of the valid traffic between them, for
the fuzz test of the serving stack (``tests/integration/test_fuzz.py``).

:class:`FuzzGenerator` turns a seed, held-out transactions (in time order) and the clock of the
bundle's feature state into a deterministic list of :class:`FuzzRequest`: mostly malformed
requests of many kinds for the transformer (v1 and v2), valid transactions interleaved in time
order (so the per-card state is exercised), identical retries, conflicting reuses of known ids,
and a few hundred requests straight at the predictor. Each request says what the server must do
(:data:`ACCEPT`, :data:`RETRY`, :data:`REFUSE`, :data:`CONFLICT`) and which transactions the
server would absorb if it answered 200, so the test can compute the expected feature state from
the answers alone.

Kinds are named ``<group>.<detail>[.<protocol>]`` (``field.amt.nan.v1``, ``v2.shape-mismatch``,
``header.content-type.v2``, ``predictor.short-row.v1``, ...) so the test can count and report
them by kind.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from fraud_detection.features import MICROS_PER_SECOND, timestamp_to_micros
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    ID_COLUMNS,
    MERCHANT_ID,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    TRANSACTION_ID,
)

V1_PATH = "/v1/models/fraud-detector:predict"
V2_PATH = "/v2/models/fraud-detector/infer"
JSON_TYPE = {"content-type": "application/json"}
INFERENCE_HEADER = "inference-header-content-length"

#: What the server must answer.
ACCEPT = "accept"  # 200; absorbs the request's transactions
RETRY = "retry"  # 200; identical to an accepted transaction, absorbs nothing new
REFUSE = "refuse"  # a 4xx; changes nothing
CONFLICT = "conflict"  # 409: a known transaction_id with another payload; changes nothing

TRANSFORMER = "transformer"
PREDICTOR = "predictor"

ID_FIELDS = ID_COLUMNS
FIELDS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
DAY_S = 86_400


class Absorbed(NamedTuple):
    """A transaction as the transformer absorbs it."""

    transaction_id: str
    card_id: str
    merchant_id: str
    amount: float
    timestamp_micros: int

    @property
    def payload(self) -> tuple[str, str, float, int]:
        """What an identical retry repeats."""
        return (self.card_id, self.merchant_id, self.amount, self.timestamp_micros)


@dataclass(frozen=True)
class Raw:
    """A JSON literal written as is (``NaN``, ``1e400``, ...)."""

    text: str


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: A field value that leaves the field out.
MISSING = _Missing()


@dataclass
class FuzzRequest:
    """One request to send, and what the server must do with it."""

    kind: str
    expect: str
    method: str = "POST"
    path: str = V1_PATH
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_TYPE))
    body: bytes = b""
    target: str = TRANSFORMER
    #: Send the body in chunks, without a ``Content-Length``.
    chunked: bool = False
    #: Send these bytes on a new connection instead (malformed HTTP framing).
    raw: bytes | None = None
    #: What the transformer absorbs if it answers 200 (None: the instances cannot be read).
    transactions: tuple[Absorbed, ...] | None = ()

    @property
    def malformed(self) -> bool:
        """Whether the request must be refused."""
        return self.expect in (REFUSE, CONFLICT)

    def describe(self, limit: int = 240) -> str:
        """A short description for reports: kind, method, path, headers, start of the body."""
        shown = self.raw if self.raw is not None else self.body
        excerpt = shown[:limit].decode("utf-8", "backslashreplace")
        more = f"… ({len(shown)} bytes)" if len(shown) > limit else ""
        headers = {k: v[:60] for k, v in self.headers.items()}
        path = self.path if len(self.path) < 100 else self.path[:100] + "…"
        framing = " [raw connection]" if self.raw is not None else " [chunked]" * self.chunked
        return f"{self.kind}: {self.method} {path}{framing} {headers} {excerpt!r}{more}"


# ------------------------------------------------------------------------------ encoding
def to_json(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` literals written as is."""
    raws: list[str] = []

    def marker(item: Any) -> str:
        if not isinstance(item, Raw):
            raise TypeError(f"cannot encode {type(item).__name__}")
        raws.append(item.text)
        return f"\x00raw{len(raws) - 1}\x00"

    text = json.dumps(value, allow_nan=True, default=marker)
    for index, literal in enumerate(raws):
        text = text.replace(f'"\\u0000raw{index}\\u0000"', literal, 1)
    return text


def encode(value: Any) -> bytes:
    """:func:`to_json` as bytes (ASCII: other characters are escaped)."""
    return to_json(value).encode("ascii")


def v1_body(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"instances": [...]}``."""
    return {"instances": list(instances)}


def v2_tensor(name: str, values: list[Any], datatype: str | None = None) -> dict[str, Any]:
    """One v2 input tensor of a transaction field."""
    kind = datatype or ("FP64" if name == AMOUNT else "BYTES")
    return {"name": name, "shape": [len(values)], "datatype": kind, "data": values}


def v2_body(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The transformer's v2 request: one tensor per field.

    A transaction field missing from some instance has no tensor at all (a tensor cannot leave
    one row out); an unknown field gets a tensor, null where an instance lacks it.
    """
    names = [name for name in FIELDS if any(name in row for row in instances)]
    for row in instances:
        names += [name for name in row if name not in names]
    inputs = []
    for name in names:
        if name in FIELDS and any(name not in row for row in instances):
            continue
        inputs.append(v2_tensor(name, [row.get(name) for row in instances]))
    return {"inputs": inputs}


def iso(micros: int) -> str:
    """ISO-8601 UTC text of a timestamp in microseconds."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lenient_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError("not text")


def _lenient_amount(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise TypeError("not a number")
    if isinstance(value, Raw):
        value = value.text
    return float(value)


def interpret(instances: Sequence[Mapping[str, Any]]) -> tuple[Absorbed, ...] | None:
    """What a lenient server would absorb from these instances; None when it cannot be read."""
    absorbed = []
    for instance in instances:
        try:
            ids = [_lenient_text(instance[name]) for name in ID_FIELDS]
            amount = _lenient_amount(instance[AMOUNT])
            stamp = instance[TIMESTAMP]
            if not isinstance(stamp, str):
                return None
            micros = timestamp_to_micros(stamp)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        absorbed.append(Absorbed(*ids, amount, micros))
    return tuple(absorbed)


# ------------------------------------------------------------------------------ card numbers
def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial`` + it pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(partial)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def card_number(rng: random.Random) -> str:
    """A Luhn-valid 16-digit card number."""
    partial = rng.choice("3456") + "".join(rng.choice("0123456789") for _ in range(14))
    return partial + luhn_check_digit(partial)


_FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + digit) for digit in range(10)))


def disguised_card_number(rng: random.Random) -> tuple[str, str]:
    """(disguise, text): a card number as it may hide in an id."""
    number = card_number(rng)
    groups = [number[i : i + 4] for i in range(0, 16, 4)]
    disguises = {
        "plain": number,
        "spaces": " ".join(groups),
        "dots": ".".join(groups),
        "dashes": "-".join(groups),
        "zero-width": "\u200b".join(groups),
        "full-width": number.translate(_FULL_WIDTH),
        "pan-prefix": f"pan:{number}",
    }
    name = rng.choice(sorted(disguises))
    return name, disguises[name]


# ------------------------------------------------------------------------------ the generator
@dataclass
class FuzzConfig:
    """How many requests of which sort; the limits of the servers under test."""

    seed: int = 20_261_129
    #: Malformed requests for the transformer (conflicts included).
    malformed: int = 10_500
    #: Requests straight at the predictor (malformed and a few valid).
    predictor_requests: int = 320
    #: Chance that the next transformer request is a valid transaction.
    valid_share: float = 0.075
    #: Chance that the next transformer request is an identical retry.
    retry_share: float = 0.012
    max_instances: int = 1_000
    max_body_bytes: int = 1 << 20
    n_features: int = 18


Generator = Callable[[], FuzzRequest]


class FuzzGenerator:
    """Deterministic traffic for one fuzz run (see the module docstring).

    Args:
        config: counts, seed and limits.
        valid_instances: valid scoring instances in time order (held-out transactions).
        clock_micros: the latest timestamp of the bundle's feature state (the event clock).
    """

    def __init__(
        self,
        config: FuzzConfig,
        valid_instances: Sequence[Mapping[str, Any]],
        clock_micros: int,
    ) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.valid = list(valid_instances)
        self.clock = clock_micros
        self.sequence = 0
        self.accepted: list[Mapping[str, Any]] = []
        self.cards = sorted({row[CARD_ID] for row in self.valid})
        self.merchants = sorted({row[MERCHANT_ID] for row in self.valid})
        self.categories = sorted({row[CATEGORY] for row in self.valid if CATEGORY in row})
        self.kinds: list[tuple[float, Generator]] = [
            (45.0, self.field_mutation),
            (10.0, self.body_shape),
            (0.4, self.too_many),
            (4.0, self.duplicate_ids),
            (2.6, self.other_protocol),
            (10.0, self.v2_tensor_problem),
            (12.0, self.header_problem),
            (2.0, self.conflict),
            (4.0, self.method_or_path),
            (0.25, self.oversized),
            (1.0, self.raw_http),
        ]

    # -------------------------------------------------------------- traffic
    def generate(self) -> list[FuzzRequest]:
        """The whole run: transformer traffic with the predictor's requests interleaved."""
        transformer = list(self._transformer_traffic())
        predictor = [self.predictor_request() for _ in range(self.config.predictor_requests)]
        slots = sorted(self.rng.sample(range(len(transformer) + 1), len(predictor)))
        merged: list[FuzzRequest] = []
        previous = 0
        for slot, request in zip(slots, predictor, strict=True):
            merged.extend(transformer[previous:slot])
            merged.append(request)
            previous = slot
        merged.extend(transformer[previous:])
        return merged

    def _transformer_traffic(self) -> Iterator[FuzzRequest]:
        weights = [weight for weight, _ in self.kinds]
        makers = [maker for _, maker in self.kinds]
        malformed = 0
        while malformed < self.config.malformed:
            draw = self.rng.random()
            if draw < self.config.valid_share and self.valid:
                yield self.valid_request()
            elif draw < self.config.valid_share + self.config.retry_share and self.accepted:
                yield self.retry()
            else:
                request = self.rng.choices(makers, weights)[0]()
                malformed += request.malformed
                yield request

    # -------------------------------------------------------------- helpers
    def fresh_id(self, prefix: str = "fz") -> str:
        """A transaction id never used before."""
        self.sequence += 1
        return f"{prefix}-{self.config.seed}-{self.sequence:06d}"

    def recent_timestamp(self) -> str:
        """A timestamp within the accepted range: up to an hour behind the clock."""
        return iso(self.clock - self.rng.randint(0, 3_600) * MICROS_PER_SECOND)

    def base_instance(self) -> dict[str, Any]:
        """A valid instance with a fresh id, for mutations."""
        return {
            TRANSACTION_ID: self.fresh_id(),
            CARD_ID: self.rng.choice(self.cards),
            MERCHANT_ID: self.rng.choice(self.merchants),
            AMOUNT: round(self.rng.uniform(1.0, 900.0), 2),
            TIMESTAMP: self.recent_timestamp(),
            CATEGORY: self.rng.choice(self.categories),
        }

    def protocol(self) -> str:
        """``v1`` or ``v2``, at random."""
        return self.rng.choice(("v1", "v2"))

    def scoring_request(
        self,
        kind: str,
        instances: Sequence[Mapping[str, Any]],
        expect: str = REFUSE,
    ) -> FuzzRequest:
        """A request scoring ``instances`` (v1 or v2 at random), with what it would absorb."""
        protocol = self.protocol()
        body = v1_body(instances) if protocol == "v1" else v2_body(instances)
        return FuzzRequest(
            f"{kind}.{protocol}" if expect == REFUSE else kind,
            expect,
            path=V1_PATH if protocol == "v1" else V2_PATH,
            body=encode(body),
            transactions=interpret(instances),
        )

    # -------------------------------------------------------------- valid traffic
    def valid_request(self) -> FuzzRequest:
        """The next one or two held-out transactions, in time order."""
        count = min(len(self.valid), self.rng.choice((1, 1, 1, 2)))
        batch, self.valid = self.valid[:count], self.valid[count:]
        for instance in batch:
            self.clock = max(self.clock, timestamp_to_micros(instance[TIMESTAMP]))
        self.accepted.extend(batch)
        return self.scoring_request("valid", batch, ACCEPT)

    def retry(self) -> FuzzRequest:
        """An accepted transaction sent again, identical."""
        return self.scoring_request("valid.retry", [self.rng.choice(self.accepted)], RETRY)

    def conflict(self) -> FuzzRequest:
        """A known transaction_id with another payload."""
        if not self.accepted:
            return self.field_mutation()
        known = dict(self.rng.choice(self.accepted))
        change = self.rng.choice((AMOUNT, CARD_ID, MERCHANT_ID))
        if change == AMOUNT:
            known[AMOUNT] = round(known[AMOUNT] + self.rng.uniform(1.0, 50.0), 2)
        elif change == CARD_ID:
            known[CARD_ID] = self.rng.choice(
                [card for card in self.cards if card != known[CARD_ID]]
            )
        else:
            known[MERCHANT_ID] = self.rng.choice(
                [merchant for merchant in self.merchants if merchant != known[MERCHANT_ID]]
            )
        return self.scoring_request(f"conflict.{change}", [known], CONFLICT)

    # -------------------------------------------------------------- field mutations
    def field_mutation(self) -> FuzzRequest:
        """One field of one instance made invalid (the others valid)."""
        instance = self.base_instance()
        field_name = self.rng.choice((*FIELDS, "extra"))
        if field_name == "extra":
            name = self.rng.choice(("extra", "is_fraud", "pan", "cardId", "amount", "__proto__"))
            instance[name] = self.rng.choice((1, "x", None, True, [1], {"a": 1}))
            detail = "extra-field"
        else:
            detail, value = self._bad_value(field_name)
            if value is MISSING:
                del instance[field_name]
            else:
                instance[field_name] = value
        instances = [instance]
        if self.rng.random() < 0.15:  # the bad instance among valid ones
            instances = [self.base_instance(), instance, self.base_instance()]
            self.rng.shuffle(instances)
        return self.scoring_request(f"field.{field_name}.{detail}", instances)

    def _bad_value(self, name: str) -> tuple[str, Any]:
        if name == AMOUNT:
            return self._bad_amount()
        if name == TIMESTAMP:
            return self._bad_timestamp()
        choices: list[Callable[[], tuple[str, Any]]] = [
            self._wrong_type,
            self._surrogate_text,
            self._control_text,
        ]
        if name != CATEGORY:
            choices += [
                lambda: ("missing", MISSING),
                self._blank_text,
                self._long_text,
                self._card_number_text,
            ]
        choices.append(lambda: ("null", None))
        return self.rng.choice(choices)()

    def _card_number_text(self) -> tuple[str, Any]:
        disguise, text = disguised_card_number(self.rng)
        return f"card-number-{disguise}", text

    def _wrong_type(self) -> tuple[str, Any]:
        # Arrays have two elements: in a v2 tensor a one-element array is a nested row of one
        # value ([[x]] flattens to [x]), which is valid.
        return self.rng.choice(
            (
                ("integer", self.rng.randint(1, 10**12)),
                ("float", 12.5),
                ("boolean", self.rng.choice((True, False))),
                ("array", ["text", "more"]),
                ("object", {"value": "text"}),
            )
        )

    def _surrogate_text(self) -> tuple[str, Any]:
        surrogate = chr(self.rng.randint(0xD800, 0xDFFF))
        text = self.rng.choice(("", "id-", "card-0001"))
        position = self.rng.randint(0, len(text))
        return "lone-surrogate", text[:position] + surrogate + text[position:]

    def _control_text(self) -> tuple[str, Any]:
        char = chr(self.rng.choice((0, 1, 7, 8, 9, 10, 13, 27, 31)))
        return "control-char", self.rng.choice((f"id{char}x", f"{char}", f"card{char}"))

    def _blank_text(self) -> tuple[str, Any]:
        return "blank", self.rng.choice(("", " ", "   ", "\u3000"))

    def _long_text(self) -> tuple[str, Any]:
        length = self.rng.choice((1_000, 5_000, 20_000, 100_000))
        return f"long-{length}", "x" * length

    def _bad_amount(self) -> tuple[str, Any]:
        return self.rng.choice(
            (
                ("missing", MISSING),
                ("null", None),
                ("numeric-text", f"{self.rng.uniform(1, 99):.2f}"),
                (
                    "unicode-digits",
                    self.rng.choice(
                        ("\u0661\u0662\u066b\u0665", "\uff11\uff12", "\u0967\u0968", "12\u00a0")
                    ),
                ),
                ("boolean", self.rng.choice((True, False))),
                ("array", [12.5, 1.0]),
                ("object", {"value": 12.5}),
                ("nan", Raw("NaN")),
                ("infinity", Raw(self.rng.choice(("Infinity", "-Infinity")))),
                ("overflow", Raw(self.rng.choice(("1e400", "-1e400", "1" + "0" * 400)))),
                ("negative", -round(self.rng.uniform(0.01, 500.0), 2)),
                ("huge", self.rng.choice((1e12, 1e15, 1e300, 1.7976931348623157e308))),
            )
        )

    def _bad_timestamp(self) -> tuple[str, Any]:
        clock = self.clock
        day = DAY_S * MICROS_PER_SECOND
        return self.rng.choice(
            (
                ("missing", MISSING),
                ("null", None),
                ("number", self.rng.choice((1_767_225_600, 1.7e9))),
                ("boolean", True),
                ("array", [iso(clock), iso(clock)]),
                ("garbage", self.rng.choice(("yesterday", "", " ", "NaT", "nan", "0", "T"))),
                (
                    "invalid-date",
                    self.rng.choice(
                        (
                            "2026-02-30T10:00:00",
                            "2026-13-01T00:00:00Z",
                            "2026-01-01T25:00:00",
                            "2026-01-01T00:00:00+25:00",
                            "2026/01/01 00:00:00",
                            "01/02/2026",
                        )
                    ),
                ),
                ("far-future", iso(clock + self.rng.choice((3, 40, 400)) * day)),
                (
                    "far-future-year",
                    self.rng.choice(("2999-01-01T00:00:00Z", "9999-12-31T23:59:59")),
                ),
                ("far-past", iso(clock - self.rng.choice((45, 400, 4_000)) * day)),
                ("far-past-year", self.rng.choice(("1900-01-01T00:00:00Z", "0001-01-01T00:00:00"))),
                self._surrogate_text(),
                ("control-char", iso(clock)[:10] + "\x00" + iso(clock)[11:]),
            )
        )

    # -------------------------------------------------------------- body shapes
    def body_shape(self) -> FuzzRequest:
        """Bodies that are not JSON, or JSON of the wrong shape."""
        protocol = self.protocol()
        path = V1_PATH if protocol == "v1" else V2_PATH
        detail, body = self.rng.choice(
            (self._invalid_json, self._wrong_shape, self._deep_nesting, self._wrong_container)
        )(protocol)
        return FuzzRequest(f"body.{detail}.{protocol}", REFUSE, path=path, body=body)

    def _valid_text(self, protocol: str) -> bytes:
        instance = self.base_instance()
        body = v1_body([instance]) if protocol == "v1" else v2_body([instance])
        return encode(body)

    def _invalid_json(self, protocol: str) -> tuple[str, bytes]:
        text = self._valid_text(protocol)
        cut = self.rng.randint(1, len(text) - 1)
        variants = {
            "truncated": text[:cut],
            "trailing-garbage": text + self.rng.choice((b"x", b"}", b",", b"]]")),
            "garbage": bytes(self.rng.randint(0, 255) for _ in range(self.rng.randint(1, 200))),
            "single-quotes": text.replace(b'"', b"'"),
            "invalid-utf8": text.replace(b'"card', b'"\xff\xfecard', 1).replace(
                b'"merchant', b'"\xc3(merchant', 1
            ),
            "raw-control-char": text.replace(b"-", b"\x01", 1),
            "empty": b"",
            "whitespace": b"  \n\t ",
            "comment": b"/* c */" + text,
        }
        name = self.rng.choice(sorted(variants))
        return f"invalid-json-{name}", variants[name]

    def _wrong_shape(self, protocol: str) -> tuple[str, bytes]:
        name, value = self.rng.choice(
            (
                ("string", '"instances"'),
                ("number", str(self.rng.choice((0, 42, -1.5, 1e300)))),
                ("array", to_json([self.base_instance()])),
                ("null", "null"),
                ("boolean", self.rng.choice(("true", "false"))),
                ("empty-object", "{}"),
            )
        )
        return f"json-{name}", value.encode()

    def _deep_nesting(self, protocol: str) -> tuple[str, bytes]:
        depth = self.rng.choice((100, 1_000, 5_000, 50_000))
        if self.rng.random() < 0.5:
            return f"deep-array-{depth}", b"[" * depth + b"]" * depth
        key = b"instances" if protocol == "v1" else b"inputs"
        head = b'{"' + key + b'":'
        return f"deep-object-{depth}", head + b'{"a":' * depth + b"1" + b"}" * (depth + 1)

    def _wrong_container(self, protocol: str) -> tuple[str, bytes]:
        key = "instances" if protocol == "v1" else "inputs"
        name, value = self.rng.choice(
            (
                ("missing", {}),
                ("string", {key: "rows"}),
                ("number", {key: 3}),
                ("object", {key: {"a": 1}}),
                ("null", {key: None}),
                ("empty", {key: []}),
                ("items-not-objects", {key: [1, "x", None]}),
                ("nested-array", {key: [[self.base_instance()]]}),
            )
        )
        return f"container-{name}", encode(value)

    # -------------------------------------------------------------- batches
    def too_many(self) -> FuzzRequest:
        """More instances than one request may carry."""
        count = self.config.max_instances + self.rng.choice((1, 100, 1_500))
        template = self.base_instance()
        instances = [{**template, TRANSACTION_ID: self.fresh_id()} for _ in range(count)]
        return self.scoring_request(f"batch.too-many-{count}", instances)

    def duplicate_ids(self) -> FuzzRequest:
        """Two instances of one request with the same transaction_id."""
        first = self.base_instance()
        if self.rng.random() < 0.5:
            second = dict(first)
            detail = "identical"
        else:
            second = {**self.base_instance(), TRANSACTION_ID: first[TRANSACTION_ID]}
            detail = "different"
        instances = [first, self.base_instance(), second]
        return self.scoring_request(f"batch.duplicate-ids-{detail}", instances)

    def other_protocol(self) -> FuzzRequest:
        """A v1 body on the v2 endpoint, or the reverse."""
        instances = [self.base_instance()]
        if self.rng.random() < 0.5:
            body, path, detail = v1_body(instances), V2_PATH, "v1-body-on-v2"
        else:
            body, path, detail = v2_body(instances), V1_PATH, "v2-body-on-v1"
        return FuzzRequest(
            f"batch.{detail}",
            REFUSE,
            path=path,
            body=encode(body),
            transactions=interpret(instances),
        )

    # -------------------------------------------------------------- v2 tensors
    def v2_tensor_problem(self) -> FuzzRequest:
        """v2 inputs of wrong shapes, datatypes, lengths; missing or extra inputs."""
        instances = [self.base_instance() for _ in range(self.rng.choice((1, 2)))]
        body = v2_body(instances)
        inputs = body["inputs"]
        target = self.rng.choice(inputs)
        detail = self.rng.choice(
            (
                "shape-mismatch",
                "shape-not-a-list",
                "shape-negative",
                "shape-2d",
                "datatype-numeric-id",
                "datatype-text-amount",
                "datatype-bool-amount",
                "datatype-unknown",
                "lengths-differ",
                "missing-input",
                "duplicate-input",
                "unknown-input",
                "data-not-a-list",
                "data-nested",
                "parameters-invalid",
                "id-not-text",
                "name-not-text",
            )
        )
        self._break_tensor(detail, body, inputs, target, len(instances))
        return FuzzRequest(
            f"v2.{detail}",
            REFUSE,
            path=V2_PATH,
            body=encode(body),
            transactions=interpret(instances),
        )

    def _break_tensor(
        self, detail: str, body: dict[str, Any], inputs: list[Any], target: Any, rows: int
    ) -> None:
        amount = next(tensor for tensor in inputs if tensor["name"] == AMOUNT)
        ids = [tensor for tensor in inputs if tensor["name"] in ID_FIELDS]
        if detail == "shape-mismatch":
            target["shape"] = [rows + self.rng.choice((1, 5))]
        elif detail == "shape-not-a-list":
            target["shape"] = self.rng.choice(("1", 1, None))
        elif detail == "shape-negative":
            target["shape"] = [-rows]
        elif detail == "shape-2d":
            target["shape"] = [rows, 2]
        elif detail == "datatype-numeric-id":
            tensor = self.rng.choice(ids)
            tensor["datatype"] = self.rng.choice(("FP64", "INT64"))
            tensor["data"] = [self.rng.randint(1, 10**9) for _ in range(rows)]
        elif detail == "datatype-text-amount":
            amount["datatype"] = "BYTES"
            amount["data"] = [f"{value:.2f}" for value in amount["data"]]
        elif detail == "datatype-bool-amount":
            amount["datatype"] = "BOOL"
            amount["data"] = [True] * rows
        elif detail == "datatype-unknown":
            # Not "fp64": KServe reads datatypes case-insensitively before any model sees them.
            target["datatype"] = self.rng.choice(("FLOAT", "STRING", "", "FP128"))
        elif detail == "lengths-differ":
            target["data"] = target["data"] + target["data"][:1]
            target["shape"] = [rows + 1]
        elif detail == "missing-input":
            inputs.remove(self.rng.choice([t for t in inputs if t["name"] != CATEGORY]))
        elif detail == "duplicate-input":
            inputs.append(dict(target))
        elif detail == "unknown-input":
            inputs.append(v2_tensor(self.rng.choice(("extra", "is_fraud", "pan")), ["x"] * rows))
        elif detail == "data-not-a-list":
            target["data"] = self.rng.choice(("x", 1, {"a": 1}, None))
        elif detail == "data-nested":
            target["data"] = [[value, value] for value in target["data"]]
        elif detail == "parameters-invalid":
            target["parameters"] = self.rng.choice(([1], "x", {"a": [1]}, {"a": {"b": 1}}))
        elif detail == "id-not-text":
            body["id"] = self.rng.choice((7, [1], {"a": 1}, True))
        else:  # name-not-text
            target["name"] = self.rng.choice((7, None, ["card_id"]))

    # -------------------------------------------------------------- headers
    def header_problem(self) -> FuzzRequest:
        """Wrong content types and encodings, bad v2 binary headers, bad CloudEvents."""
        return self.rng.choice(
            (
                self._wrong_content_type,
                self._missing_content_type,
                self._content_encoding,
                self._inference_header,
                self._binary_request,
                self._cloudevent,
                self._cloudevent,
            )
        )()

    def _wrong_content_type(self) -> FuzzRequest:
        value = self.rng.choice(
            (
                "text/plain",
                "application/xml",
                "text/json",
                "multipart/form-data; boundary=x",
                "application/x-www-form-urlencoded",
                "image/png",
                "application/javascript",
                "garbage",
                "a/b/c",
            )
        )
        request = self.scoring_request("header.content-type", [self.base_instance()], REFUSE)
        request.headers = {"content-type": value}
        return request

    def _missing_content_type(self) -> FuzzRequest:
        request = self.body_shape()
        request.kind = request.kind.replace("body.", "header.no-content-type.", 1)
        request.headers = {}
        return request

    def _content_encoding(self) -> FuzzRequest:
        request = self.scoring_request("header.content-encoding", [self.base_instance()], REFUSE)
        request.headers = {**JSON_TYPE, "content-encoding": self.rng.choice(("gzip", "br", "x"))}
        return request

    def _inference_header(self) -> FuzzRequest:
        instances = [self.base_instance()]
        body = encode(v2_body(instances))
        value = self.rng.choice(
            ("abc", "-1", "", "1e3", "0x10", "+5", "99999999999999999999", str(len(body) + 7))
        )
        return FuzzRequest(
            "header.inference-header-content-length",
            REFUSE,
            path=V2_PATH,
            headers={"content-type": "application/octet-stream", INFERENCE_HEADER: value},
            body=body,
            transactions=interpret(instances),
        )

    def _binary_request(self) -> FuzzRequest:
        instances = [self.base_instance()]
        body = v2_body(instances)
        card = next(tensor for tensor in body["inputs"] if tensor["name"] == CARD_ID)
        raw = instances[0][CARD_ID].encode()
        detail = self.rng.choice(("size-short", "size-long", "size-text", "not-utf8", "bad-head"))
        if detail == "not-utf8":
            raw = b"\xff\xfe\xc3("
        data = len(raw).to_bytes(4, "little") + raw
        size: Any = len(data)
        if detail == "size-short":
            size -= 2
        elif detail == "size-long":
            size += 100
        elif detail == "size-text":
            size = str(size)
        del card["data"]
        card["parameters"] = {"binary_data_size": size}
        head = encode(body)
        if detail == "bad-head":
            head = head[:-3]
        return FuzzRequest(
            f"header.binary-{detail}",
            REFUSE,
            path=V2_PATH,
            headers={"content-type": "application/octet-stream", INFERENCE_HEADER: str(len(head))},
            body=head + data,
            transactions=interpret(instances),
        )

    def _cloudevent(self) -> FuzzRequest:
        headers = {
            "ce-specversion": "1.0",
            "ce-source": "fuzz",
            "ce-type": "org.example.score",
            "ce-id": self.fresh_id("ce"),
        }
        instances = [self.base_instance()]
        good = encode(v1_body(instances))
        detail, body = self.rng.choice(
            (
                ("empty", b""),
                ("whitespace", b"  "),
                ("null", b"null"),
                ("invalid-json", good[:-2]),
                ("json-string", b'"instances"'),
                ("json-array", b"[1, 2]"),
                ("bad-specversion", good),
                ("bad-field", encode(v1_body([{**instances[0], AMOUNT: Raw("NaN")}]))),
            )
        )
        if detail == "bad-specversion":
            headers["ce-specversion"] = self.rng.choice(("9.9", "", "one"))
        if self.rng.random() < 0.5:
            headers["content-type"] = "application/json"
        return FuzzRequest(
            f"header.cloudevent-{detail}",
            REFUSE,
            headers=headers,
            body=body,
            transactions=interpret(instances) if detail == "bad-specversion" else None,
        )

    # -------------------------------------------------------------- methods, paths, sizes
    def method_or_path(self) -> FuzzRequest:
        """Wrong methods on the scoring endpoints; unknown paths, models, versions, verbs."""
        body = self._valid_text("v1")
        if self.rng.random() < 0.5:
            method = self.rng.choice(("GET", "PUT", "DELETE", "PATCH", "OPTIONS"))
            path = self.rng.choice((V1_PATH, V2_PATH))
            return FuzzRequest(f"method.{method}", REFUSE, method=method, path=path, body=body)
        name, path = self.rng.choice(
            (
                ("unknown", "/v1/score"),
                ("unknown", "/predict"),
                ("unknown-model", "/v1/models/no-such-model:predict"),
                ("unknown-model", "/v2/models/no-such-model/infer"),
                ("unknown-verb", "/v1/models/fraud-detector:score"),
                ("explain", "/v1/models/fraud-detector:explain"),
                ("version", "/v2/models/fraud-detector/versions/2/infer"),
                ("long", "/v1/models/" + "m" * 3_000 + ":predict"),
                ("encoded", "/v1/models/fraud%2Fdetector:predict"),
            )
        )
        return FuzzRequest(f"path.{name}", REFUSE, path=path, body=body)

    def oversized(self) -> FuzzRequest:
        """A body over the limit, declared or chunked."""
        size = self.config.max_body_bytes + self.rng.randint(1, self.config.max_body_bytes)
        filler = "x" * size
        body = encode({"instances": [{**self.base_instance(), "padding": filler}]})
        chunked = self.rng.random() < 0.3
        return FuzzRequest(
            "size.over-limit" + ("-chunked" if chunked else ""),
            REFUSE,
            body=body,
            chunked=chunked,
        )

    def raw_http(self) -> FuzzRequest:
        """Framing the HTTP parser refuses: bad Content-Length, bad chunks."""
        body = self._valid_text("v1")
        name, framing = self.rng.choice(
            (
                ("content-length-text", b"content-length: abc\r\n"),
                ("content-length-negative", b"content-length: -5\r\n"),
                ("content-length-twice", b"content-length: 3\r\ncontent-length: 4\r\n"),
                ("content-length-overflow", b"content-length: 99999999999999999999999\r\n"),
                ("content-length-space", b"content-length: 1 2\r\n"),
                ("chunk-size-garbage", b"transfer-encoding: chunked\r\n"),
            )
        )
        payload = b"zz\r\n" + body + b"\r\n0\r\n\r\n" if name.startswith("chunk") else body
        request_line = f"POST {self.rng.choice((V1_PATH, V2_PATH))} HTTP/1.1\r\n".encode()
        raw = (
            request_line
            + b"host: fuzz\r\ncontent-type: application/json\r\n"
            + framing
            + b"\r\n"
            + payload
        )
        return FuzzRequest(f"http.{name}", REFUSE, raw=raw, body=b"")

    # -------------------------------------------------------------- the predictor
    def predictor_request(self) -> FuzzRequest:
        """Feature rows straight at the predictor: mostly malformed, some valid."""
        n = self.config.n_features
        if self.rng.random() < 0.1:
            rows = [[round(self.rng.random(), 4) for _ in range(n)] for _ in range(2)]
            if self.rng.random() < 0.5:
                return self._predictor_v1("predictor.valid", rows, ACCEPT)
            return self._predictor_v2("predictor.valid", rows, ACCEPT)
        row = [round(self.rng.random(), 4) for _ in range(n)]
        detail, rows = self.rng.choice(
            (
                ("short-row", [row[:-1]]),
                ("long-row", [[*row, 0.5]]),
                ("ragged", [row, row[:3]]),
                ("text-value", [[*row[:-1], "0.5"]]),
                ("boolean-value", [[*row[:-1], True]]),
                ("null-value", [[*row[:-1], None]]),
                ("nested-value", [[*row[:-1], [0.5]]]),
                ("nan", [[*row[:-1], Raw("NaN")]]),
                ("infinity", [[*row[:-1], Raw("-Infinity")]]),
                ("overflow", [[*row[:-1], Raw("1e400")]]),
                ("huge-integer", [[*row[:-1], Raw("1" + "0" * 400)]]),
                ("empty", []),
                ("empty-row", [[]]),
                ("huge-batch", [[0] * n] * 10_001),
            )
        )
        if self.rng.random() < 0.6 or detail.startswith(
            ("nan", "infinity", "overflow", "huge-int")
        ):
            return self._predictor_v1(f"predictor.{detail}.v1", rows, REFUSE)
        return self._predictor_v2(f"predictor.{detail}.v2", rows, REFUSE)

    def _predictor_v1(self, kind: str, rows: list[Any], expect: str) -> FuzzRequest:
        return FuzzRequest(kind, expect, body=encode({"instances": rows}), target=PREDICTOR)

    def _predictor_v2(self, kind: str, rows: list[Any], expect: str) -> FuzzRequest:
        flat = [value for row in rows for value in (row if isinstance(row, list) else [row])]
        width = self.config.n_features
        shape = (
            [len(rows), width]
            if expect == ACCEPT
            else [len(rows), max(1, len(flat) // max(1, len(rows)))]
        )
        tensor = {"name": "features", "shape": shape, "datatype": "FP32", "data": flat}
        return FuzzRequest(
            kind, expect, path=V2_PATH, body=encode({"inputs": [tensor]}), target=PREDICTOR
        )
