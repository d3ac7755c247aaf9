"""The commands of ``stratacache`` (click for the commands, rich for tables).

Every command takes the Redis URL first (or ``STRATACACHE_URL``), ``-n/--namespace``
(or ``STRATACACHE_NAMESPACE``) and ``--cluster``. Read commands take ``--json``; writes
go through a :class:`stratacache.Cache`, so they reach every instance on the bus like any
write of the application. Errors are one line on stderr and exit status 1 (2 for a usage
error); a namespace with neither an instance record nor a key is an error, so a typo
does not pass for an empty namespace.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, NoReturn, Optional

import click
import msgpack  # type: ignore[import-untyped]
import redis
import redis.cluster
from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import _primitives
from ._acl import acl_rules
from ._bus_messages import MAC_BYTES, Action, decode_message
from ._codec import Codec
from ._errors import CorruptEntryError, StratacacheError
from ._instances import InstanceInfo
from ._keys import KeySpace
from ._schedule import decode_definition, decode_last, index_key, next_tick, schedule_keys
from ._sync.cache import Cache
from ._sync.instances import instances as read_instances

_TIMEOUT = 5.0  # seconds: a CLI may wait longer than a service's 100 ms budget
_CLI_INSTANCE = "stratacache-cli"
_DEFAULT_NAMESPACE = "stratacache"

# piped output is for reading later (or grep): do not fold the tables to 80 columns
_out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class CliError(click.ClickException):
    """One line on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"stratacache: error: {self.format_message()}", err=True)


class _Command(click.Command):
    """Takes the URL from ``STRATACACHE_URL`` when no argument is one (a Redis URL always
    has a scheme: ``redis://``, ``rediss://``, ``unix://``). Click alone would give the
    first positional (a key, say) to URL."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        env = os.environ.get("STRATACACHE_URL")
        takes_url = any(p.name == "url" for p in self.params if isinstance(p, click.Argument))
        if env and takes_url and not any("://" in arg for arg in args):
            args = [env, *args]
        return super().parse_args(ctx, args)


class _Group(click.Group):
    """Turns the errors a command can meet (Redis unreachable, a refused command, bad
    input) into one line instead of a traceback."""

    command_class = _Command
    group_class = type  # subgroups are _Groups too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except redis.exceptions.ConnectionError as exc:
            raise CliError(f"cannot reach Redis: {exc}") from exc
        except redis.exceptions.TimeoutError as exc:
            raise CliError(f"Redis did not answer in time: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise CliError(f"Redis error: {type(exc).__name__}: {exc}") from exc
        except StratacacheError as exc:
            raise CliError(f"{type(exc).__name__}: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc)) from exc


# -- connection and namespace ----------------------------------------------------------


class Target:
    """The Redis and namespace a command works on (a client, opened lazily)."""

    def __init__(self, url: str, namespace: str, cluster: bool) -> None:
        try:
            self.keys = KeySpace(namespace)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        self.url = url
        self.namespace = namespace
        self.cluster = cluster
        self._client: Any = None

    @property
    def client(self) -> Any:
        """A client on the target Redis (connected and checked on first use)."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        kwargs = {"socket_timeout": _TIMEOUT, "socket_connect_timeout": _TIMEOUT}
        try:
            if self.cluster:
                return redis.cluster.RedisCluster.from_url(self.url, **kwargs)
            client = redis.Redis.from_url(self.url, **kwargs)
        except ValueError as exc:
            raise CliError(f"bad Redis URL {self.url!r}: {exc}") from None
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            # a cluster connects in from_url (and raises RedisClusterException, no RedisError,
            # when no node answers, or a TLS certificate is refused)
            raise CliError(f"cannot reach the Redis Cluster at {self.url}: {exc}") from None
        try:
            info = client.info("cluster")
        except redis.exceptions.RedisError as exc:
            client.close()
            raise CliError(f"cannot reach Redis at {self.url}: {exc}") from None
        if info.get("cluster_enabled"):
            client.close()
            raise CliError(f"{self.url} is a Redis Cluster node: pass --cluster")
        return client

    def close(self) -> None:
        """Close the client, if one was opened."""
        if self._client is not None:
            _primitives.close_client(self._client)
            self._client = None

    def records(self) -> list[InstanceInfo]:
        """The live instances' heartbeat records."""
        return read_instances(self.client, self.namespace)

    def require_namespace(self, records: Optional[list[InstanceInfo]] = None) -> None:
        """Fail unless the namespace has an instance record or at least one key."""
        if records is None:
            records = self.records()
        if records:
            return
        client = self.client
        if client.exists(self.keys.instance_index_key()):
            return
        for _ in client.scan_iter(match=f"{self.namespace}:*", count=1000):
            return
        raise CliError(
            f"unknown namespace {self.namespace!r}: no instance record and no key in Redis "
            "(check -n/--namespace, the URL and --cluster)"
        )

    @contextmanager
    def cache(self) -> Iterator[Cache]:
        """A cache on the namespace for writes: on the bus (each write reaches every
        instance), without a heartbeat record of its own, failing loudly."""
        self.close()  # the cache opens its own client
        client: Any
        if self.cluster:
            client = redis.cluster.RedisCluster.from_url(
                self.url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
            )
        else:
            client = redis.Redis.from_url(
                self.url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
            )
        cache = Cache(
            client,
            namespace=self.namespace,
            instance=_CLI_INSTANCE,
            instance_ttl=0,
            bus_batch_window=0,  # published before each call returns
            on_write_error="raise",
            close_timeout=_TIMEOUT,
        )
        try:
            yield cache
        finally:
            cache.close()
            _primitives.close_client(client)


def _target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--cluster",
        is_flag=True,
        envvar="STRATACACHE_CLUSTER",
        help="The URL is a node of a Redis Cluster.",
    )(fn)
    fn = click.option(
        "-n",
        "--namespace",
        default=_DEFAULT_NAMESPACE,
        show_default=True,
        envvar="STRATACACHE_NAMESPACE",
        help="The caches' namespace.",
    )(fn)
    return click.argument("url")(fn)  # or STRATACACHE_URL: see _Command


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")(fn)


@contextmanager
def _target(url: str, namespace: str, cluster: bool) -> Iterator[Target]:
    target = Target(url, namespace, cluster)
    try:
        yield target
    finally:
        target.close()


# -- output ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """``value`` as something ``json.dumps`` takes (repr for what JSON has no form of)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(_jsonable(data), sort_keys=True))


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    try:
        moment = _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        # the times come from Redis, where anyone can write: a bus message or record with
        # sent_at=1e300 (or a str) crashed `bus tail` / `dead-letters`; show it as it is
        return f"<{timestamp!r:.40}>"
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):  # a hostile record's times: int() would raise
        return str(seconds)
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _instances_table(records: list[InstanceInfo], namespace: str) -> Table:
    now = time.time()
    table = Table(title=f"stratacache instances of {namespace!r}: {len(records)}")
    for name, justify in [
        ("id", "left"),
        ("host", "left"),
        ("pid", "right"),
        ("version", "left"),
        ("uptime", "right"),
        ("bus", "left"),
        ("lag p99", "right"),
        ("hit ratio", "right"),
        ("outbox", "right"),
        ("dead letters", "right"),
        ("breaker", "left"),
        ("seen", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in records:
        bus = r.bus_state if r.bus_state == "healthy" else f"[bold red]{r.bus_state}[/]"
        breaker = (
            r.breaker_state if r.breaker_state == "closed" else f"[bold red]{r.breaker_state}[/]"
        )
        table.add_row(
            r.id,
            r.host,
            str(r.pid),
            r.version,
            _duration(r.uptime),
            bus,
            f"{r.bus_lag_p99 * 1000:.1f} ms",
            f"{r.hit_ratio:.1%}",
            str(r.outbox_size) if not r.outbox_size else f"[yellow]{r.outbox_size}[/]",
            str(r.dead_letters) if not r.dead_letters else f"[bold red]{r.dead_letters}[/]",
            breaker,
            f"{max(0.0, now - r.updated_at):.1f}s ago",
        )
    return table


# -- the commands ----------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stratacache", prog_name="stratacache")
@click.option("-v", "--verbose", is_flag=True, help="Show the library's log messages.")
def cli(verbose: bool) -> None:
    """Operate stratacache: see every instance of a namespace, read and invalidate
    entries, follow the audit stream and the invalidation bus, serve metrics.

    Every command takes the Redis URL first (or STRATACACHE_URL), -n/--namespace (or
    STRATACACHE_NAMESPACE) and --cluster for a Redis Cluster.
    """
    logger = logging.getLogger("stratacache")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        # the CLI's own short-lived cache logs its bus stopping at exit: not news
        logger.setLevel(logging.CRITICAL)


@cli.command()
@_target_options
@_json_option
@click.option("--watch", is_flag=True, help="Refresh the table live until interrupted.")
@click.option(
    "--interval", default=1.0, show_default=True, type=float, help="Seconds between refreshes."
)
@click.option(
    "--count", default=0, type=int, help="With --watch: stop after this many refreshes (0: never)."
)
def instances(
    url: str,
    namespace: str,
    cluster: bool,
    as_json: bool,
    watch: bool,
    interval: float,
    count: int,
) -> None:
    """The live instances of a namespace: the heartbeat record each cache publishes
    about itself (host, pid, version, uptime, bus state and lag, hit ratio, outbox,
    dead letters, breaker). A record is refreshed about once a second and expires a few
    seconds after its process stopped refreshing it."""
    with _target(url, namespace, cluster) as target:
        records = target.records()
        target.require_namespace(records)
        if not watch:
            if as_json:
                _print_json([r.to_dict() for r in records])
            else:
                _out.print(_instances_table(records, namespace))
            return
        shown = 0
        if as_json:
            while True:
                _print_json([r.to_dict() for r in records])
                shown += 1
                if count and shown >= count:
                    return
                time.sleep(interval)
                records = target.records()
        with Live(_instances_table(records, namespace), console=_out, auto_refresh=False) as live:
            while True:
                shown += 1
                if count and shown >= count:
                    return
                time.sleep(interval)
                live.update(_instances_table(target.records(), namespace), refresh=True)


def _aggregate(records: list[InstanceInfo]) -> dict[str, Any]:
    """Namespace totals from the instance records."""
    total: dict[str, Any] = {"instances": len(records)}
    for name in (
        "l1_hits",
        "l1_misses",
        "l2_hits",
        "l2_misses",
        "loads",
        "errors",
        "stale_served",
        "invalidations",
        "outbox_size",
        "dead_letters",
        "l1_size",
        "bus_messages_sent",
        "bus_messages_received",
    ):
        total[name] = sum(getattr(r, name) for r in records)
    reads = total["l1_hits"] + total["l1_misses"]
    total["hit_ratio"] = (total["l1_hits"] + total["l2_hits"]) / reads if reads else 0.0
    total["bus_unhealthy"] = sum(r.bus_state != "healthy" for r in records)
    total["breakers_open"] = sum(r.breaker_state != "closed" for r in records)
    total["bus_lag_p99_max"] = max((r.bus_lag_p99 for r in records), default=0.0)
    return total


@cli.command()
@_target_options
@_json_option
def stats(url: str, namespace: str, cluster: bool, as_json: bool) -> None:
    """Namespace totals, summed over the live instances' records (counters since each
    instance started; instances that stopped no longer count)."""
    with _target(url, namespace, cluster) as target:
        records = target.records()
        target.require_namespace(records)
    total = _aggregate(records)
    if as_json:
        _print_json(total)
        return
    table = Table(title=f"stratacache stats of {namespace!r}", show_header=False)
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, value in total.items():
        shown = f"{value:.1%}" if name == "hit_ratio" else value
        if name == "bus_lag_p99_max":
            shown = f"{value * 1000:.1f} ms"
        table.add_row(name.replace("_", " "), str(shown))
    _out.print(table)


def _decode_entry(key: str, blob: bytes) -> dict[str, Any]:
    """The entry in ``blob`` as a dict; values of application types this process does not
    know are shown as ``<ext N: M bytes>`` rather than failing."""
    try:
        entry = Codec().decode(key, blob)
        return {
            "value": entry.value,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "tags": list(entry.tags),
            "stamps": list(entry.stamps),
            "epoch": entry.epoch,
            "decoded": True,
        }
    except CorruptEntryError as exc:
        problem = str(exc)

    def ext(code: int, data: bytes) -> str:
        return f"<ext {code}: {len(data)} bytes>"

    try:
        raw = msgpack.unpackb(blob, strict_map_key=False, ext_hook=ext)
        _, _, created_at, expires_at, tags, stamps, epoch, value = raw
        # shown and used below (tag keys, TTL left): anything else would be a traceback
        if not (isinstance(tags, list) and all(type(t) is str for t in tags)):
            raise ValueError("bad tags")
        if not isinstance(stamps, list) or type(epoch) is not int:
            raise ValueError("bad stamps or epoch")
        if type(created_at) not in (int, float) or type(expires_at) not in (int, float, type(None)):
            raise ValueError("bad times")
    except Exception:
        raise CliError(
            f"the entry of {key!r} cannot be decoded ({problem}): written with a codec secret, "
            "or not by stratacache"
        ) from None
    return {
        "value": value,
        "created_at": created_at,
        "expires_at": expires_at,
        "tags": list(tags),
        "stamps": list(stamps),
        "epoch": epoch,
        "decoded": False,
        "problem": problem,
    }


@cli.command()
@_target_options
@_json_option
@click.argument("key")
def get(url: str, namespace: str, cluster: bool, as_json: bool, key: str) -> None:
    """The L2 entry of KEY, decoded, with its envelope: TTL left, tags and the tag
    versions it was written with (stamps) against the current ones, created and expiry
    times. Exit status 1 if there is no entry."""
    with _target(url, namespace, cluster) as target:
        keys = target.keys
        redis_key = keys.data_key(key)
        client = target.client
        blob = client.get(redis_key)
        if blob is None:
            target.require_namespace()
            raise CliError(f"no entry for key {key!r} in namespace {namespace!r}")
        pttl = client.pttl(redis_key)
        data = _decode_entry(key, blob)
        names = [keys.meta_key("epoch"), *(keys.tag_key(t) for t in data["tags"])]
        current = [int(v) if v else 0 for v in _mget(client, names, cluster)]
    now = time.time()
    expires_at = data["expires_at"]
    data.update(
        key=key,
        redis_key=redis_key,
        size=len(blob),
        ttl_left=None if expires_at is None else expires_at - now,
        redis_ttl=pttl / 1000 if pttl >= 0 else None,
        current_epoch=current[0],
        current_stamps=current[1:],
    )
    data["valid"] = (
        data["epoch"] == current[0]
        and data["stamps"] == current[1:]
        and (expires_at is None or expires_at > now)
    )
    if as_json:
        _print_json(data)
        return
    table = Table(title=f"{namespace}: {key}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    ttl_left = data["ttl_left"]
    rows = [
        ("value", repr(data["value"])),
        ("valid", "yes" if data["valid"] else "[bold red]no[/] (expired or invalidated)"),
        ("created", _when(data["created_at"])),
        ("expires", _when(expires_at)),
        ("ttl left", "never expires" if ttl_left is None else f"{ttl_left:.3f} s"),
        ("redis ttl", "none" if data["redis_ttl"] is None else f"{data['redis_ttl']:.3f} s"),
        ("tags", ", ".join(data["tags"]) or "-"),
        ("stamps", f"{data['stamps']} (now {data['current_stamps']})"),
        ("epoch", f"{data['epoch']} (now {current[0]})"),
        ("redis key", redis_key),
        ("size", f"{len(blob)} bytes"),
    ]
    if not data["decoded"]:
        rows.append(("note", f"[yellow]{data['problem']}[/]"))
    for name, value in rows:
        table.add_row(name, value)
    _out.print(table)


def _mget(client: Any, names: list[str], cluster: bool) -> list[Any]:
    return client.mget_nonatomic(names) if cluster else client.mget(names)  # type: ignore[no-any-return]


def _invalidation(
    describe: str,
) -> Callable[[Callable[[Cache, str, str], int]], Callable[..., None]]:
    """A command that runs one invalidation through a cache and prints what it did."""

    def decorate(run: Callable[[Cache, str, str], int]) -> Callable[..., None]:
        def command(url: str, namespace: str, cluster: bool, reason: str, **args: str) -> None:
            (arg,) = args.values()
            with _target(url, namespace, cluster) as target:
                target.require_namespace()
                with target.cache() as cache:
                    removed = run(cache, arg, reason)
            click.echo(f"{describe.format(arg=arg)}: {removed} Redis key(s) removed")

        command.__doc__ = run.__doc__
        command.__name__ = run.__name__
        return command

    return decorate


_reason_option = click.option(
    "--reason",
    default="stratacache CLI",
    show_default=True,
    help="Recorded in the audit stream.",
)


@cli.command("invalidate")
@_target_options
@_reason_option
@click.argument("key")
@_invalidation("invalidated key {arg!r}")
def invalidate(cache: Cache, key: str, reason: str) -> int:
    """Invalidate KEY everywhere: its L2 entry and every instance's L1 (on the bus)."""
    return cache.invalidate(key, reason=reason)


@cli.command("invalidate-tag")
@_target_options
@_reason_option
@click.argument("tag")
@_invalidation("invalidated tag {arg!r}")
def invalidate_tag(cache: Cache, tag: str, reason: str) -> int:
    """Invalidate every entry written with TAG (at once, logically; the keys are deleted
    in the background)."""
    return cache.invalidate_tag(tag, reason=reason)


@cli.command("invalidate-pattern")
@_target_options
@_reason_option
@click.argument("glob")
@_invalidation("invalidated keys matching {arg!r}")
def invalidate_pattern(cache: Cache, glob: str, reason: str) -> int:
    """Invalidate every key matching GLOB (Redis glob syntax on user keys; SCANs the
    namespace)."""
    return cache.invalidate_pattern(glob, reason=reason)


@cli.command("invalidate-all")
@_target_options
@_reason_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def invalidate_all(url: str, namespace: str, cluster: bool, reason: str, yes: bool) -> None:
    """Invalidate every entry of the namespace (raises its epoch: every entry becomes a
    miss and every instance flushes its L1). Asks first, unless --yes."""
    with _target(url, namespace, cluster) as target:
        target.require_namespace()
        if not yes:
            click.confirm(f"Invalidate every entry of namespace {namespace!r}?", abort=True)
        with target.cache() as cache:
            cache.invalidate_all(reason=reason)
    click.echo(f"invalidated every entry of namespace {namespace!r}")


@cli.command("dead-letters")
@_target_options
@_json_option
def dead_letters(url: str, namespace: str, cluster: bool, as_json: bool) -> None:
    """Dead letters per instance, as the instances report them.

    Dead letters (operations Redis refused for good) live in the memory of the process
    that made them, not in Redis, so this command shows what each live instance
    publishes in its heartbeat record: how many it holds and the newest five. Replaying
    them happens in that process: Cache.replay_dead_letters(). A process that died took
    its dead letters with it (its writes are covered by the epoch bump the outbox owes).
    """
    with _target(url, namespace, cluster) as target:
        records = target.records()
        target.require_namespace(records)
    if as_json:
        _print_json(
            [
                {"id": r.id, "dead_letters": r.dead_letters, "recent": list(r.recent_dead_letters)}
                for r in records
            ]
        )
        return
    total = sum(r.dead_letters for r in records)
    if not total:
        click.echo(f"no dead letters in the {len(records)} live instance(s) of {namespace!r}")
        return
    table = Table(title=f"dead letters in {namespace!r}: {total} (held in each process)")
    for name in (
        "instance",
        "count",
        "kind",
        "target",
        "redis",
        "attempts",
        "first failed",
        "error",
    ):
        table.add_column(name)
    for r in records:
        if not r.dead_letters:
            continue
        letters = r.recent_dead_letters or ({},)
        for i, letter in enumerate(letters):
            table.add_row(
                r.id if i == 0 else "",
                str(r.dead_letters) if i == 0 else "",
                str(letter.get("kind", "")),
                str(letter.get("target", "")),
                str(letter.get("redis", "")),
                str(letter.get("attempts", "")),
                _when(letter.get("first_failed_at")),
                str(letter.get("last_error", "")),
            )
    _out.print(table)


def _audit_row(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    f = {
        (k.decode() if isinstance(k, bytes) else k): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        )
        for k, v in fields.items()
    }
    try:
        count = int(f.get("count", 0))
        when = float(f.get("time", 0.0))
    except ValueError:
        count, when = 0, 0.0
    return {
        "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        "time": when,
        "instance": f.get("instance", ""),
        "action": f.get("action", ""),
        "target": f.get("target", ""),
        "count": count,
        "reason": f.get("reason") or None,
    }


def _print_audit(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(row)
        return
    reason = f"  ({row['reason']})" if row["reason"] else ""
    click.echo(
        f"{_when(row['time'])}  {row['instance']}  {row['action']} {row['target']!r} "
        f"-> {row['count']}{reason}"
    )


@cli.command()
@_target_options
@_json_option
@click.option("--last", default=20, show_default=True, help="Show the newest N records first.")
@click.option("--follow", is_flag=True, help="Then print new records as they are appended.")
@click.option("--count", default=0, help="With --follow: exit after N new records (0: never).")
def audit(
    url: str, namespace: str, cluster: bool, as_json: bool, last: int, follow: bool, count: int
) -> None:
    """The audit stream of the namespace (every instance's invalidations: who, what,
    how many keys, why), oldest first; --follow waits for new ones (XREAD; a line on
    stderr says when it follows)."""
    with _target(url, namespace, cluster) as target:
        target.require_namespace()
        client = target.client
        stream = target.keys.meta_key("audit")
        newest = client.xrevrange(stream, count=last) if last > 0 else []
        for entry_id, fields in reversed(newest):
            _print_audit(_audit_row(entry_id, fields), as_json)
        if not follow:
            return
        after = newest[0][0] if newest else (client.xrevrange(stream, count=1) or [[b"0-0"]])[0][0]
        click.echo(f"following {stream}", err=True)
        seen = 0
        while True:
            reply = client.xread({stream: after}, block=1000, count=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    after = entry_id
                    _print_audit(_audit_row(entry_id, fields), as_json)
                    seen += 1
                    if count and seen >= count:
                        return
            sys.stdout.flush()


@cli.group()
def bus() -> None:
    """The invalidation bus of a namespace."""


@bus.command("tail")
@_target_options
@_json_option
@click.option("--heartbeats", is_flag=True, help="Show heartbeats too (4 a second per instance).")
@click.option("--count", default=0, help="Exit after N messages (0: never).")
def bus_tail(
    url: str, namespace: str, cluster: bool, as_json: bool, heartbeats: bool, count: int
) -> None:
    """Print the namespace's bus messages as they pass, decoded: sender (source id, as
    in `stratacache instances`), sequence number, lag, action, keys / tags / patterns.
    Messages are only what the bus carries (never values); a line on stderr says when
    the subscription is in place."""
    with _target(url, namespace, cluster) as target:
        target.require_namespace()
        channel = target.keys.channel()
        shard = _primitives.shard_client(target.client, channel) if cluster else None
        pubsub = (shard or target.client).pubsub()
        try:
            if cluster:
                pubsub.ssubscribe(channel)
            else:
                pubsub.subscribe(channel)
            seen = 0
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                kind = message["type"]
                if kind in ("subscribe", "ssubscribe"):
                    click.echo(f"listening on {channel}", err=True)
                    continue
                if kind not in ("message", "smessage"):
                    continue
                decoded = decode_message(message["data"])
                if decoded is None and isinstance(message["data"], bytes):
                    # a signed message (bus_secret): shown after its tag, not verified —
                    # the command has no secret; the caches verify what they apply
                    decoded = decode_message(message["data"][MAC_BYTES:])
                if decoded is not None and decoded.action is Action.HEARTBEAT and not heartbeats:
                    continue
                _print_bus_message(decoded, message["data"], as_json)
                seen += 1
                if count and seen >= count:
                    return
        finally:
            pubsub.close()
            if shard is not None:
                shard.close()


def _print_bus_message(decoded: Any, data: Any, as_json: bool) -> None:
    now = time.time()
    if decoded is None:
        size = len(data) if isinstance(data, (bytes, str)) else 0
        if as_json:
            _print_json({"error": "undecodable message", "size": size})
        else:
            click.echo(f"{_when(now)}  undecodable message ({size} bytes)")
        sys.stdout.flush()
        return
    row = {
        "source": decoded.source.hex(),
        "seq": decoded.seq,
        "sent_at": decoded.sent_at,
        "lag": max(0.0, now - decoded.sent_at),
        "action": decoded.action.name.lower(),
        "args": list(decoded.args),
    }
    if as_json:
        _print_json(row)
    else:
        args = " ".join(repr(a) for a in decoded.args)
        click.echo(
            f"{_when(decoded.sent_at)}  {row['source'][:12]} #{decoded.seq}  "
            f"lag {row['lag'] * 1000:.1f} ms  {row['action']} {args}".rstrip()
        )
    sys.stdout.flush()


@cli.command()
@_target_options
@click.option("--port", required=True, type=int, help="Port of the /metrics endpoint.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def metrics(url: str, namespace: str, cluster: bool, port: int, host: str) -> None:
    """Serve Prometheus metrics for a namespace on http://HOST:PORT/metrics until
    interrupted (needs stratacache[prometheus]).

    The collector runs over a cache of this process, connected to the namespace: it
    sees the namespace's bus (messages, lag, health) and Redis from here. Per-process
    counters (hits, loads) belong to each application process, which exports them with
    stratacache.prometheus.register(cache); `stratacache stats` sums what the instances
    publish.
    """
    try:
        prometheus = importlib.import_module("stratacache.prometheus")
        client_module = importlib.import_module("prometheus_client")
    except ModuleNotFoundError as exc:
        if exc.name == "stratacache.prometheus":
            raise CliError(
                "this stratacache has no Prometheus collector (stratacache.prometheus)"
            ) from None
        raise CliError(
            f"serving metrics needs {exc.name}: pip install 'stratacache[prometheus]'"
        ) from None
    with _target(url, namespace, cluster) as target:
        target.require_namespace()
        with target.cache() as cache:
            cache.get("stratacache-cli-metrics")  # starts the bus: its metrics are live
            prometheus.register(cache)
            try:
                server = client_module.start_http_server(port, addr=host)
            except OSError as exc:
                raise CliError(f"cannot listen on {host}:{port}: {exc}") from None
            click.echo(
                f"serving the metrics of namespace {namespace!r} on http://{host}:{port}/metrics",
                err=True,
            )
            _wait_for_signal()
            if isinstance(server, tuple):  # prometheus-client >= 0.17: (server, thread)
                server[0].shutdown()


@cli.command()
@click.option(
    "-n",
    "--namespace",
    required=True,
    envvar="STRATACACHE_NAMESPACE",
    help="The namespace the user's caches serve.",
)
@click.option("--user", required=True, help="The Redis user to create (or reset).")
@click.option("--password", required=True, help="Its password.")
@click.option("--cluster", is_flag=True, help="Also grant what a Redis Cluster client needs.")
def acl(namespace: str, user: str, password: str, cluster: bool) -> None:
    """Print the least-privilege ACL SETUSER line for a cache of a namespace: the
    commands it sends, the keys under NAMESPACE: and its bus channel. Run it with
    redis-cli (on every node of a cluster); caches check it with check_permissions().
    """
    try:
        click.echo(acl_rules(namespace, user=user, password=password, cluster=cluster))
    except ValueError as exc:
        raise CliError(str(exc)) from None


# -- warming and schedules --------------------------------------------------------------------


def _import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable named ``module:function`` (``module.sub:obj.attr`` too), imported with
    the current directory on the path, as ``python -m`` would."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not module:function", param_hint=what)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r} ({what}): {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{module_name!r} has no {attr!r} ({what})") from None
    if not callable(obj):
        raise CliError(f"{spec} is not callable ({what})")
    return obj  # type: ignore[no-any-return]


@cli.command()
@_target_options
@_json_option
@click.argument("source")
@click.option(
    "--loader-many",
    metavar="MODULE:FUNCTION",
    help="SOURCE yields keys; this function takes a list of keys and returns a mapping "
    "of key to value.",
)
@click.option("--batch-size", default=500, show_default=True, help="Items per pipeline.")
@click.option("--concurrency", default=4, show_default=True, help="Batches in flight at once.")
@click.option("--rate", type=float, default=None, help="At most this many items per second.")
@click.option("--ttl", type=float, default=None, help="TTL of the entries (seconds).")
@click.option("--tag", "tags", multiple=True, help="Tag every entry (repeat for several).")
@click.option(
    "--resume-key",
    default=None,
    help="Keep a checkpoint under this name: run again after a failure to skip the batches done.",
)
@click.option(
    "--retry-for",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a failed batch is retried while Redis does not answer.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar (default: when stderr is a terminal and tqdm is installed).",
)
def warm(
    url: str,
    namespace: str,
    cluster: bool,
    as_json: bool,
    source: str,
    loader_many: Optional[str],
    batch_size: int,
    concurrency: int,
    rate: Optional[float],
    ttl: Optional[float],
    tags: tuple[str, ...],
    resume_key: Optional[str],
    retry_for: float,
    progress: Optional[bool],
) -> None:
    """Warm the cache from SOURCE, a MODULE:FUNCTION that returns or yields (key, value)
    pairs or a mapping (or keys, with --loader-many). Entries are written as the
    application's writes are (same envelope, tags, bus), in batches. Exit status 1 if
    any item failed (see --resume-key)."""
    produce = _import_callable(source, "SOURCE")
    load = None if loader_many is None else _import_callable(loader_many, "--loader-many")
    with _target(url, namespace, cluster) as target, target.cache() as cache:
        report = cache.warm(
            produce(),
            loader_many=load,
            ttl=ttl,
            tags=tags,
            batch_size=batch_size,
            max_concurrency=concurrency,
            rate=rate,
            progress=progress,
            resume_key=resume_key,
            retry_for=retry_for,
        )
    if as_json:
        _print_json({**report.__dict__, "rate": report.rate})
    else:
        click.echo(
            f"warmed namespace {namespace!r}: {report.written} written, {report.skipped} "
            f"skipped, {report.failed} failed in {report.seconds:.2f} s "
            f"({report.rate:,.0f}/s, {report.batches} batches"
            + (f", {report.resumed_batches} resumed" if report.resumed_batches else "")
            + ")"
        )
        for line in report.errors:
            click.echo(f"  {line}", err=True)
        if report.checkpoint is not None:
            click.echo(
                f"checkpoint {resume_key!r} at batch {report.checkpoint}: run again with "
                "--resume-key to write the rest",
                err=True,
            )
    if not report.ok:
        raise click.exceptions.Exit(1)


def _schedule_rows(target: Target) -> list[dict[str, Any]]:
    """The schedules recorded in the namespace, with their last-fired records."""
    client = target.client
    names = [
        n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
        for n in client.zrange(index_key(target.keys), 0, -1)
    ]
    if not names:
        return []
    keys = [k for name in names for k in schedule_keys(target.keys, name)]
    raw = _mget(client, keys, target.cluster)
    now = time.time()
    rows = []
    for i, name in enumerate(names):
        definition = decode_definition(raw[2 * i])
        last = decode_last(raw[2 * i + 1])
        row: dict[str, Any] = {"name": name, "cron": None, "next_fire": None}
        if definition is not None:
            row["cron"] = definition["cron"]
            targets = [f"tag {t!r}" for t in definition.get("tags", ())]
            targets += [f"key {k!r}" for k in definition.get("keys", ())]
            targets += [f"pattern {p!r}" for p in definition.get("patterns", ())]
            if definition.get("everything"):
                targets.append("everything")
            row["invalidates"] = ", ".join(targets)
            row["registered_by"] = definition.get("instance")
            row["registered_at"] = definition.get("registered_at")
            try:
                row["next_fire"] = next_tick(definition["cron"], now)
            except Exception:  # a record written by a newer croniter, say
                pass
        fired = last is not None and last.instance is not None
        row["last_tick"] = last.tick if fired and last else None
        row["last_fired_at"] = last.fired_at if fired and last else None
        row["last_fired_by"] = last.instance if fired and last else None
        rows.append(row)
    return rows


@cli.command()
@_target_options
@_json_option
def schedules(url: str, namespace: str, cluster: bool, as_json: bool) -> None:
    """The scheduled invalidations registered in a namespace: cron, what each
    invalidates, the next tick (UTC) and the last tick fired (when, by which instance)."""
    with _target(url, namespace, cluster) as target:
        rows = _schedule_rows(target)
        if not rows:
            target.require_namespace()
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"stratacache schedules of {namespace!r}: {len(rows)}")
    for column in ("name", "cron", "invalidates", "next fire", "last tick", "fired at", "by"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["cron"] or "[bold red]?[/]",
            row.get("invalidates", ""),
            _when(row["next_fire"]),
            _when(row["last_tick"]),
            _when(row["last_fired_at"]),
            row["last_fired_by"] or "-",
        )
    _out.print(table)


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (either ends the command cleanly)."""

    def stop(signum: int, frame: Any) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
