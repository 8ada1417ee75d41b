"""A deterministic synthetic corpus of developer memories, with paraphrase queries.

Item ``i`` depends only on ``(SEED, i)``, so the first 10k items of a 100k corpus are the 10k
corpus, and a cached store of N items can be extended to a larger N. Memories mix decisions,
gotchas, facts, preferences, notes and session summaries about services, libraries, error codes,
file paths, commands, tables and settings, with many rare tokens (ticket ids, ports, versions)
and common words alike, so that BM25 and cosine behave as they would on a real store.

Each item also carries a query that a user would type to find it: a paraphrase that shares an
entity or two with the memory but little of its wording.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEED = 20240611
VERSION = 1
"""Bump when generation changes: cached stores are keyed by it."""

PROJECTS = (
    "atlas",
    "billing-platform",
    "checkout-web",
    "data-pipeline",
    "mobile-app",
    "infra",
    "search-svc",
    "auth-service",
    "ml-platform",
    "docs-site",
    "cli-tools",
    "payments-gateway",
    "analytics",
    "notifications",
    "inventory",
    "support-portal",
)
# Zipf-like: a few big projects, a long tail (the first holds ~27% of memories).
PROJECT_WEIGHTS = tuple(1.0 / (rank + 1) for rank in range(len(PROJECTS)))

_DOMAINS = (
    "billing auth ledger checkout search catalog inventory payments notify email sms media "
    "thumbnail feed ranking recs session profile audit export import report gateway edge cache "
    "scheduler webhook invoice tax shipping pricing fraud risk kyc onboarding geo maps chat "
    "presence upload refund coupon loyalty"
).split()
_ROLES = "api service worker gateway proxy daemon cron consumer indexer sync".split()
SERVICES = tuple(f"{d}-{r}" for d in _DOMAINS for r in _ROLES)

LIBRARIES: dict[str, tuple[str, ...]] = {
    "HTTP client": ("requests", "httpx", "aiohttp", "urllib3", "axios", "got", "reqwest", "okhttp"),
    "ORM": (
        "SQLAlchemy",
        "Django ORM",
        "peewee",
        "Tortoise",
        "Prisma",
        "TypeORM",
        "GORM",
        "Diesel",
    ),
    "test runner": ("pytest", "unittest", "Jest", "Vitest", "Mocha", "Playwright", "Cypress"),
    "task queue": ("Celery", "RQ", "Dramatiq", "arq", "Huey", "Sidekiq", "BullMQ", "Temporal"),
    "logging library": ("structlog", "loguru", "pino", "winston", "zap", "slog", "log4j"),
    "validation library": ("pydantic", "marshmallow", "attrs", "msgspec", "zod", "serde", "joi"),
    "web framework": (
        "FastAPI",
        "Flask",
        "Django",
        "Starlette",
        "Express",
        "NestJS",
        "Gin",
        "Axum",
    ),
    "database": ("PostgreSQL", "MySQL", "SQLite", "Redis", "MongoDB", "ClickHouse", "DynamoDB"),
    "bundler": ("webpack", "Vite", "esbuild", "Rollup", "Parcel", "Turbopack"),
    "linter": ("ruff", "flake8", "pylint", "ESLint", "Biome", "mypy", "pyright", "clippy"),
    "frontend framework": ("React", "Vue", "Svelte", "Angular", "SolidJS", "htmx", "Next.js"),
    "IaC tool": ("Terraform", "Pulumi", "Helm", "Kustomize", "Ansible", "CDK"),
    "tracing tool": ("OpenTelemetry", "Jaeger", "Honeycomb", "Datadog APM", "Zipkin", "Sentry"),
    "package manager": ("uv", "poetry", "pip-tools", "pnpm", "npm", "yarn", "cargo"),
    "message broker": ("Kafka", "RabbitMQ", "NATS", "SQS", "Pub/Sub", "Redis Streams"),
    "feature flag system": ("LaunchDarkly", "Unleash", "Flagsmith", "GrowthBook", "ConfigCat"),
}

HTTP_ERRORS = (
    ("400", "Bad Request"),
    ("401", "Unauthorized"),
    ("403", "Forbidden"),
    ("404", "Not Found"),
    ("409", "Conflict"),
    ("412", "Precondition Failed"),
    ("413", "Payload Too Large"),
    ("422", "Unprocessable Entity"),
    ("429", "Too Many Requests"),
    ("500", "Internal Server Error"),
    ("502", "Bad Gateway"),
    ("503", "Service Unavailable"),
    ("504", "Gateway Timeout"),
)
OS_ERRORS = (
    "ECONNRESET ECONNREFUSED ETIMEDOUT EADDRINUSE ENOSPC EMFILE EPIPE ENOENT EACCES EHOSTUNREACH"
).split()
SQLSTATES = (
    ("40001", "serialization_failure"),
    ("23505", "unique_violation"),
    ("40P01", "deadlock_detected"),
    ("57014", "query_canceled"),
    ("53300", "too_many_connections"),
    ("42P01", "undefined_table"),
    ("23503", "foreign_key_violation"),
    ("55P03", "lock_not_available"),
)
EXCEPTIONS = (
    "KeyError TimeoutError RecursionError UnicodeDecodeError MemoryError ConnectionResetError "
    "IntegrityError OperationalError NullPointerException ConcurrentModificationException "
    "SSLError JSONDecodeError"
).split()
TABLES = (
    "users orders invoices payments sessions events line_items accounts subscriptions audit_log "
    "products shipments refunds api_keys webhooks coupons carts addresses tax_rates ledger_entries"
).split()
_DIRS = "src lib app pkg internal cmd services web config scripts deploy migrations tests".split()
_MODULES = (
    "handlers models routes settings utils client schema worker tasks views middleware "
    "serializers db cache auth retry config pagination rate_limit signing backoff"
).split()
_EXTS = ".py .py .py .ts .tsx .go .rs .yaml .toml .sql".split()
PEOPLE = (
    "Priya Marco Aiko Dmitri Fatima Lukas Chen Olu Sofia Mateo Ingrid Ravi Hana Tomasz Amara "
    "Jonas Leila Kenji Zoe Nikolai Grace Yusuf Elena Bruno"
).split()
MONTHS = "January February March April May June July August September October November December"
_MONTHS = MONTHS.split()
NAMESPACES = "prod staging dev canary sandbox".split()
REASONS = (
    "it supports async out of the box",
    "the old one leaked connections under load",
    "it halves cold-start time",
    "the maintainers stopped shipping security fixes",
    "it plays well with our type checker",
    "its retry semantics are explicit",
    "the team already knows it",
    "benchmarks showed a 3x throughput gain",
    "it has first-class OpenAPI support",
    "the license of the alternative is incompatible",
    "it keeps the container image small",
    "memory usage stayed flat in the soak test",
    "it lets us stream responses instead of buffering",
    "the error messages are far easier to debug",
    "it removes a whole class of race conditions",
    "upgrades were painful with the previous choice",
    "it works offline in CI",
    "it integrates with our tracing setup",
)
CONDITIONS = (
    "the request body is larger than 1 MiB",
    "the upstream token has expired",
    "two workers pick the same job",
    "the clock on the node drifts",
    "a tenant has more than 10k rows",
    "the cache is cold after a deploy",
    "the payload contains emoji",
    "the connection pool is exhausted",
    "a migration runs while traffic is live",
    "the retry budget is spent",
    "DNS resolution is slow",
    "the batch contains a duplicate id",
    "the feature flag is off for the tenant",
    "the CSV has a trailing newline",
    "daylight saving time starts",
    "the disk is over 90 percent full",
)
FIXES = (
    "raise the timeout to {ms} ms",
    "set {env} before starting it",
    "retry with exponential backoff and jitter",
    "pin {lib} to {version}",
    "run `{cmd}` first",
    "add an index on {table}.{column}",
    "wrap the call in a transaction",
    "restart the pod with `kubectl rollout restart deploy/{svc} -n {ns}`",
    "bump the pool size in {path}",
    "clear the cache key prefix {prefix}",
    "ask {person} to rotate the credentials",
    "disable HTTP keep-alive for that client",
)
COLUMNS = (
    "id created_at updated_at tenant_id user_id status external_ref email amount_cents".split()
)
_ENV_SUFFIX = (
    "TIMEOUT_MS POOL_SIZE URL API_KEY MAX_RETRIES BATCH_SIZE LOG_LEVEL REGION CONCURRENCY".split()
)
_MAKE_TARGETS = "test lint build dev seed migrate fixtures bench release docs e2e".split()
_NPM_SCRIPTS = "build dev test lint typecheck storybook e2e preview".split()


@dataclass(frozen=True)
class Item:
    """One generated memory and the paraphrase query that should find it."""

    index: int
    content: str
    kind: str
    project: str
    tags: tuple[str, ...]
    created_at: int
    query: str


class _Slots:
    """Random slot values for one item, drawn from its own seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.svc = rng.choice(SERVICES)
        self.svc2 = rng.choice(SERVICES)
        self.category = rng.choice(list(LIBRARIES))
        self.lib, self.lib2 = rng.sample(LIBRARIES[self.category], 2)
        self.http, self.http_name = rng.choice(HTTP_ERRORS)
        self.oserr = rng.choice(OS_ERRORS)
        self.sqlstate, self.sqlname = rng.choice(SQLSTATES)
        self.exc = rng.choice(EXCEPTIONS)
        self.table = rng.choice(TABLES)
        self.column = rng.choice(COLUMNS)
        self.person = rng.choice(PEOPLE)
        self.month = rng.choice(_MONTHS)
        self.ns = rng.choice(NAMESPACES)
        self.ms = rng.choice((250, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000))
        self.port = rng.randint(3000, 9999)
        self.version = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}"
        self.ticket = f"{rng.choice(('OPS', 'BUG', 'PLAT', 'SEC', 'INC'))}-{rng.randint(100, 9999)}"
        self.code = f"E{rng.randint(1000, 9999)}"
        self.prefix = f"{self.svc.split('-')[0]}:{rng.choice(('v1', 'v2', 'tmp', 'agg'))}:"
        self.reason = rng.choice(REASONS)
        self.condition = rng.choice(CONDITIONS)
        self.count = rng.choice((3, 5, 8, 10, 16, 32, 50, 64, 100, 128, 500))
        self.env = f"{self.svc.split('-')[0].upper()}_{rng.choice(_ENV_SUFFIX)}"
        module = rng.choice(_MODULES)
        self.path = "/".join(
            (rng.choice(_DIRS), self.svc.replace("-", "_"), module + rng.choice(_EXTS))
        )
        self.cmd = self._command()
        self.fix = rng.choice(FIXES).format(**vars(self))

    def _command(self) -> str:
        rng = self.rng
        svc = self.svc
        options = (
            f"make {rng.choice(_MAKE_TARGETS)}",
            f"pytest tests/{svc.replace('-', '_')} -x -k {self.table}",
            f"docker compose up -d {svc}",
            f"kubectl logs -f deploy/{svc} -n {self.ns}",
            "alembic upgrade head",
            f"pnpm --filter {svc} {rng.choice(_NPM_SCRIPTS)}",
            f"cargo test -p {svc}",
            f"go test ./internal/{svc.split('-')[0]}/...",
            f"terraform plan -target=module.{svc.replace('-', '_')}",
            f"psql $DATABASE_URL -c 'VACUUM ANALYZE {self.table}'",
            f"redis-cli -n {rng.randint(0, 15)} --scan --pattern '{self.prefix}*'",
            f"gh workflow run deploy-{svc}.yml -f env={self.ns}",
            "uv pip compile requirements.in -o requirements.txt",
        )
        return rng.choice(options)


def _decision(s: _Slots) -> list[tuple[str, str]]:
    return [
        (
            f"We chose {s.lib} over {s.lib2} for {s.svc} because {s.reason}.",
            f"why does {s.svc} use {s.lib}",
        ),
        (
            f"Decision ({s.month}): {s.svc} moves from {s.lib2} to {s.lib}; {s.reason}. "
            f"Tracked in {s.ticket}.",
            f"reason for switching {s.svc} away from {s.lib2}",
        ),
        (
            f"Agreed with {s.person} that {s.svc} keeps {s.lib} as its {s.category} and we do "
            f"not add {s.lib2}, since {s.reason}.",
            f"which {s.category} did we pick for {s.svc.split('-')[0]}",
        ),
        (
            f"{s.svc} stores {s.table} in {s.lib} rather than {s.lib2}; {s.reason}.",
            f"what does {s.svc} keep its {s.table} data in",
        ),
    ]


def _gotcha(s: _Slots) -> list[tuple[str, str]]:
    return [
        (
            f"{s.svc} returns {s.http} {s.http_name} when {s.condition}; {s.fix}.",
            f"{s.svc.split('-')[0]} getting {s.http} errors",
        ),
        (
            f"Gotcha: {s.lib} raises {s.exc} in {s.svc} if {s.condition}. Workaround: {s.fix}.",
            f"how to fix {s.exc} with {s.lib}",
        ),
        (
            f"Postgres error {s.sqlstate} ({s.sqlname}) on {s.table} happens when "
            f"{s.condition}. Fix: {s.fix}.",
            f"{s.sqlname.replace('_', ' ')} on the {s.table} table",
        ),
        (
            f"Intermittent {s.oserr} from {s.svc} to {s.svc2} on port {s.port}: {s.fix}.",
            f"connection problems between {s.svc} and {s.svc2}",
        ),
        (
            f"Watch out: `{s.cmd}` fails with {s.code} when {s.condition}; {s.fix}.",
            f"{s.cmd.split()[0]} command failing with {s.code}",
        ),
        (
            f"Tests for {s.svc} are flaky because {s.condition}. {s.person} suggests: {s.fix}.",
            f"flaky {s.svc} tests",
        ),
    ]


def _fact(s: _Slots) -> list[tuple[str, str]]:
    return [
        (
            f"The config for {s.svc} lives in {s.path}; {s.env} overrides it.",
            f"where is {s.svc} configured",
        ),
        (
            f"{s.svc} listens on port {s.port} locally and on 8080 in {s.ns}.",
            f"what port does {s.svc} use",
        ),
        (
            f"{s.person} owns {s.svc}; page them for anything touching {s.table}.",
            f"who maintains {s.svc}",
        ),
        (
            f"{s.svc} runs {s.lib} {s.version} and talks to {s.svc2} over gRPC.",
            f"{s.svc} dependencies and versions",
        ),
        (
            f"The {s.table} table in {s.svc} is partitioned by month and {s.column} is indexed.",
            f"how is {s.table} partitioned in {s.svc.split('-')[0]}",
        ),
        (
            f"Rate limit for {s.svc} is {s.count} requests per second per tenant.",
            f"{s.svc} throttling limits",
        ),
        (
            f"Error code {s.code} from {s.svc} means the {s.table} row is locked by another job.",
            f"meaning of {s.code}",
        ),
        (f"{s.env} defaults to {s.ms} in {s.path}.", f"default value of {s.env}"),
    ]


def _preference(s: _Slots) -> list[tuple[str, str]]:
    return [
        (
            f"Prefer {s.lib} for any new {s.category} work in {s.svc}; avoid {s.lib2}.",
            f"what {s.category} should I use in {s.svc.split('-')[0]}",
        ),
        (
            f"{s.person} prefers small PRs under {s.count * 10} lines for {s.svc}.",
            f"code review size guidelines for {s.svc}",
        ),
        (
            f"For {s.svc}, use `{s.cmd}` instead of running things by hand.",
            f"recommended way to run {s.cmd.split()[0]} for {s.svc}",
        ),
        (
            f"In {s.path}, keep functions pure and push I/O to the edges.",
            f"coding conventions in {s.path.rsplit('/', 1)[0]}",
        ),
        (
            f"Name {s.table} migrations with the ticket id, e.g. {s.ticket}_add_{s.column}.",
            f"naming convention for {s.table} schema changes",
        ),
        (
            f"Always pass explicit timeouts ({s.ms} ms is our default) to {s.lib} in {s.svc}.",
            f"default timeout for {s.lib} calls",
        ),
    ]


def _note(s: _Slots) -> list[tuple[str, str]]:
    return [
        (
            f"To reproduce {s.ticket} locally: `{s.cmd}`, then hit {s.svc} on :{s.port}.",
            f"steps to reproduce {s.ticket}",
        ),
        (
            f"Release checklist for {s.svc}: bump to {s.version}, run `{s.cmd}`, tell {s.person}.",
            f"how to release {s.svc}",
        ),
        (
            f"Backfill of {s.table}.{s.column} ran in {s.month}; {s.count} batches, no errors.",
            f"{s.table} backfill status",
        ),
        (
            f"{s.svc} dashboards are in Grafana under {s.ns}/{s.svc.split('-')[0]}; "
            f"alerts page {s.person} after {s.count} failures.",
            f"where are the {s.svc} graphs",
        ),
        (
            f"Set {s.env}={s.count} when load testing {s.svc} in {s.ns}.",
            f"load test settings for {s.svc}",
        ),
    ]


_MAKERS = (_decision, _gotcha, _fact, _preference, _note)
_MAKER_WEIGHTS = (0.2, 0.3, 0.25, 0.1, 0.15)
_START_MS = 1_700_000_000_000  # Nov 2023
_SPAN_MS = 730 * 86_400_000  # two years


def item(index: int) -> Item:
    """Item ``index`` of the corpus: a pure function of (SEED, VERSION, index)."""
    rng = random.Random(f"{SEED}:{VERSION}:{index}")
    project = rng.choices(PROJECTS, PROJECT_WEIGHTS)[0]
    created_at = _START_MS + rng.randrange(_SPAN_MS)
    if rng.random() < 0.04:  # a session summary: several memories' worth in one longer text
        parts = [_pick(rng) for _ in range(4)]
        content = "Session summary: " + " ".join(p[1] for p in parts)
        return Item(
            index, content, "session_summary", project, ("summary",), created_at, parts[0][2]
        )
    slots = _Slots(rng)
    kind, content, query = _pick(rng, slots)
    if slots.ticket not in content and rng.random() < 0.3:
        content = f"{content} See {slots.ticket}."
    return Item(index, content, kind, project, (slots.svc.split("-")[0],), created_at, query)


def _pick(rng: random.Random, slots: _Slots | None = None) -> tuple[str, str, str]:
    maker = rng.choices(_MAKERS, _MAKER_WEIGHTS)[0]
    content, query = rng.choice(maker(slots or _Slots(rng)))
    return maker.__name__.strip("_"), content, query


def items(n: int, start: int = 0) -> list[Item]:
    return [item(i) for i in range(start, start + n)]


def query_sample(n_corpus: int, count: int, seed: int = 7) -> list[Item]:
    """``count`` distinct items of the first ``n_corpus``, whose queries a benchmark issues."""
    rng = random.Random(seed)
    picks = rng.sample(range(n_corpus), min(count, n_corpus))
    return [item(i) for i in picks]


def fresh_texts(count: int, offset: int = 10_000_000) -> list[str]:
    """Memory texts from far outside any cached store (new content for write benchmarks)."""
    return [item(offset + i).content for i in range(count)]
