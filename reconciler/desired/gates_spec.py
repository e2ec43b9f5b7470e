"""`spec.healthCheck`, `spec.alarmConfiguration` and `spec.analysis` of a DeploymentGroup: what a deployment
watches besides its hooks (docs/gates.md).

- `healthCheck`: an HTTP check each host runs on itself after ValidateService; it must pass continuously for
  `minHealthyTime` (Nomad's `min_healthy_time`) within `healthyDeadline` before the host counts as succeeded.
- `alarmConfiguration`: CodeDeploy's, unchanged in meaning: any named CloudWatch alarm in ALARM stops the
  deployment (rollback on `DEPLOYMENT_STOP_ON_ALARM`).
- `analysis`: Prometheus queries judged by a `successCondition` (Argo Rollouts' analysis, simplified), measured
  `count` times `interval` apart at checkpoints after batches; a failed gate fails the deployment.

The condition language and the query variables live here too, so `validate` refuses a bad condition or an unknown
variable with its file and line, and the core (which imports this module, never the shell's clients) judges
measurements with the same code that checked them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from contract.models import Model
from reconciler.desired.durations import Duration

NonEmpty = Annotated[str, StringConstraints(min_length=1)]

#: Placeholders of a health check URL, filled per host by the reconciler.
HEALTH_URL_VARIABLES = ("address", "hostId")
#: Placeholders of an analysis query (`{{ name }}`), filled per checkpoint by the reconciler. The host lists are
#: PromQL regex alternatives (`web-1|web-2`, regex characters escaped), `__none__` when empty so that
#: `host=~"{{ batchHosts }}"` never matches every series by accident.
QUERY_VARIABLES = (
    "application",
    "group",
    "deploymentId",
    "revision",
    "checkpoint",
    "batchHosts",
    "deployedHosts",
    "baselineHosts",
)
NO_HOSTS = "__none__"
_REGEX_SPECIAL = re.compile(r"[.^$*+?()\[\]{}|\\]")
_QUERY_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_URL_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


# --------------------------------------------------------------------------------------------------
# Conditions: `result < 0.01`, `result >= 0.99 and result <= 1`


#: The one name a condition knows: the measured value.
RESULT = "result"
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_TOKEN = re.compile(r"\s*(?:(<=|>=|==|!=|<|>|\(|\)|&&|\|\|)|([A-Za-z_]+)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))")


@dataclass(frozen=True)
class Condition:
    """A parsed `successCondition`: comparisons of `result` with numbers, joined by `and` / `or` (`and` binds
    tighter), with parentheses. Small on purpose: a threshold is what a gate needs, and an expression language
    with functions would be a second query language next to PromQL."""

    text: str
    _tree: tuple[object, ...]

    @classmethod
    def parse(cls, text: str) -> Condition:
        tokens = _tokenize(text)
        parser = _Parser(tokens, text)
        tree = parser.expression()
        if parser.position != len(tokens):
            raise ValueError(f"unexpected {tokens[parser.position]!r} in condition {text!r}")
        return cls(text, tree)

    def holds(self, result: float) -> bool:
        return _evaluate(self._tree, result)


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read condition {text!r} at {stripped[position:]!r}")
        tokens.append(match.group(match.lastindex or 0))
        position = match.end()
    if not tokens:
        raise ValueError("the condition is empty; write one like `result < 0.01`")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.position = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ValueError(f"condition {self.text!r} ends too early")
        self.position += 1
        return token

    def expression(self) -> tuple[object, ...]:
        left = self.conjunction()
        while self._peek() in ("or", "||"):
            self._take()
            left = ("or", left, self.conjunction())
        return left

    def conjunction(self) -> tuple[object, ...]:
        left = self.comparison()
        while self._peek() in ("and", "&&"):
            self._take()
            left = ("and", left, self.comparison())
        return left

    def comparison(self) -> tuple[object, ...]:
        if self._peek() == "(":
            self._take()
            inner = self.expression()
            if self._take() != ")":
                raise ValueError(f"missing ) in condition {self.text!r}")
            return inner
        left = self._operand()
        operator = self._take()
        if operator not in _COMPARE:
            raise ValueError(f"expected a comparison (<, <=, >, >=, ==, !=) in {self.text!r}, found {operator!r}")
        right = self._operand()
        if (left == RESULT) == (right == RESULT):
            raise ValueError(f"each comparison in {self.text!r} compares `result` with a number")
        return ("cmp", operator, left, right)

    def _operand(self) -> str | float:
        word = self._take()
        if word == RESULT:
            return word
        try:
            number = float(word)
        except ValueError:
            raise ValueError(f"expected `result` or a number in {self.text!r}, found {word!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"compare `result` with a finite number in {self.text!r}, not {word!r}")
        return number


def _evaluate(tree: tuple[object, ...], result: float) -> bool:
    kind = tree[0]
    if kind == "and":
        return _evaluate(tree[1], result) and _evaluate(tree[2], result)  # type: ignore[arg-type]
    if kind == "or":
        return _evaluate(tree[1], result) or _evaluate(tree[2], result)  # type: ignore[arg-type]
    _, operator, left, right = tree
    a = result if left == RESULT else left
    b = result if right == RESULT else right
    return _COMPARE[str(operator)](float(a), float(b))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# healthCheck


class HealthCheckSpec(Model):
    """Each host's own HTTP check after ValidateService (Nomad's `update` health rules, per host)."""

    url: NonEmpty = Field(
        description="What each host GETs, with {address} (its agent's `address`, default 127.0.0.1) and {hostId}: "
        "`http://{address}:8080/healthz`."
    )
    expected_status: Annotated[list[Annotated[int, Field(ge=100, le=599)]], Field(min_length=1)] = Field(
        default_factory=lambda: [200]
    )
    body_match: str | None = Field(default=None, description="A regular expression the body must contain.")
    interval: Duration = timedelta(seconds=2)
    timeout: Duration = timedelta(seconds=2)
    min_healthy_time: Duration = Field(
        default=timedelta(seconds=10),
        description="How long every check must pass, from the first that does, before the host counts healthy.",
    )
    healthy_deadline: Duration = Field(
        default=timedelta(minutes=5),
        description="A host not healthy for minHealthyTime this long after ValidateService has failed.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the health check URL must start with http:// or https://")
        for name in _URL_VARIABLE.findall(url):
            if name not in HEALTH_URL_VARIABLES:
                raise ValueError(f"unknown placeholder {{{name}}} in the URL; use {{address}} or {{hostId}}")
        return url

    @field_validator("body_match")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bodyMatch is not a valid regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _times(self) -> Self:
        if self.interval <= timedelta(0) or self.timeout <= timedelta(0):
            raise ValueError("interval and timeout must be longer than 0 s")
        if self.healthy_deadline <= self.min_healthy_time:
            raise ValueError("healthyDeadline must be longer than minHealthyTime (Nomad's rule)")
        return self

    def url_for(self, host_id: str, address: str | None) -> str:
        values = {"address": address or "127.0.0.1", "hostId": host_id}
        return _URL_VARIABLE.sub(lambda m: values[m.group(1)], self.url)


# --------------------------------------------------------------------------------------------------
# alarmConfiguration


class AlarmConfigurationSpec(Model):
    """CodeDeploy's `alarmConfiguration`: any of these CloudWatch alarms in ALARM stops the deployment."""

    enabled: bool = True
    alarms: Annotated[list[NonEmpty], Field(min_length=1, max_length=10)] = Field(
        description="Alarm names (metric or composite), at most 10 as in CodeDeploy."
    )
    ignore_poll_alarm_failure: bool = Field(
        default=False,
        description="true: go on when the alarms cannot be read; false: hold the rollout until they can.",
    )
    region: NonEmpty | None = None


# --------------------------------------------------------------------------------------------------
# analysis


class PrometheusQuerySpec(Model):
    address: NonEmpty = Field(description="Prometheus' base URL: `http://prometheus:9090`.")
    query: NonEmpty = Field(description="PromQL; `{{ batchHosts }}` and the other variables are filled in.")
    timeout: Duration = timedelta(seconds=10)

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        if not address.startswith(("http://", "https://")):
            raise ValueError("the Prometheus address must start with http:// or https://")
        return address.rstrip("/")

    @field_validator("query")
    @classmethod
    def _variables(cls, query: str) -> str:
        for name in _QUERY_VARIABLE.findall(query):
            if name not in QUERY_VARIABLES:
                raise ValueError(f"unknown variable {{{{ {name} }}}} in the query; known: {', '.join(QUERY_VARIABLES)}")
        return query


GatePoint = Literal["canary", "batch", "final"]


class AnalysisGateSpec(Model):
    """One metric gate. At each checkpoint it applies to, `count` measurements `interval` apart (the first after
    `initialDelay`); more than `failureLimit` Failed fails it, more than `inconclusiveLimit` Inconclusive
    follows `onInconclusive`."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    prometheus: PrometheusQuerySpec
    success_condition: NonEmpty = Field(description="`result < 0.01`: every series' value must satisfy it.")
    interval: Duration = timedelta(seconds=30)
    initial_delay: Duration = timedelta(0)
    count: int = Field(default=1, ge=1, le=100)
    failure_limit: int = Field(default=0, ge=0)
    inconclusive_limit: int = Field(default=0, ge=0)
    on_inconclusive: Literal["Fail", "Pass"] = Field(
        default="Fail",
        description="Past inconclusiveLimit: Fail (the deployment fails: nothing proves the service healthy) or "
        "Pass (go on, with the gap noted).",
    )
    at: Annotated[list[GatePoint], Field(min_length=1)] = Field(
        default_factory=lambda: ["batch"],  # type: ignore[arg-type]
        description="canary: after the canary batch; batch: after every batch (between zones too); final: after "
        "the last batch, before the deployment succeeds.",
    )

    @field_validator("success_condition")
    @classmethod
    def _condition(cls, text: str) -> str:
        Condition.parse(text)
        return text

    @model_validator(mode="after")
    def _limits(self) -> Self:
        if self.failure_limit >= self.count:
            raise ValueError(
                f"failureLimit {self.failure_limit} can never be exceeded with count {self.count}; "
                "it must be smaller than count"
            )
        if self.inconclusive_limit >= self.count:
            raise ValueError(
                f"inconclusiveLimit {self.inconclusive_limit} would let a run of {self.count} pass with nothing "
                "measured; it must be smaller than count"
            )
        if self.interval <= timedelta(0):
            raise ValueError("interval must be longer than 0 s")
        return self

    @property
    def condition(self) -> Condition:
        return Condition.parse(self.success_condition)

    def run_time(self) -> timedelta:
        """How long one run takes when every measurement is taken on time: what `plan` adds per checkpoint."""
        return self.initial_delay + self.interval * (self.count - 1)


def unique_gate_names(gates: list[AnalysisGateSpec]) -> list[AnalysisGateSpec]:
    names = [gate.name for gate in gates]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"analysis gate names must be unique; repeated: {', '.join(repeated)}")
    return gates


def render_query(query: str, variables: Mapping[str, str]) -> str:
    """The query with `{{ name }}` filled in (names are checked when the manifest loads)."""
    return _QUERY_VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), query)


def host_regex(hosts: list[str]) -> str:
    """Host ids as a PromQL regex alternation inside a double-quoted string: regex characters escaped, and the
    escapes doubled for the string literal."""
    if not hosts:
        return NO_HOSTS
    return "|".join(_REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), host) for host in hosts)


def judge(condition: Condition, values: list[tuple[str, float]]) -> tuple[bool | None, float | None, str | None]:
    """Apply a condition to every series' value. Returns (passed, the value shown, the series it came from).

    A series that fails decides first, even when another is NaN or infinite (0/0 on a host with no traffic must
    not hide a host at 0.5). Then passed is None (nothing can be judged) when there is no series or one that is
    not a finite number. The value shown is the failing series', or the largest when all pass."""
    if not values:
        return None, None, None
    for label, value in values:
        if math.isfinite(value) and not condition.holds(value):
            return False, value, label
    for label, value in values:
        if not math.isfinite(value):
            return None, value, label
    label, value = max(values, key=lambda item: item[1])
    return True, value, label
