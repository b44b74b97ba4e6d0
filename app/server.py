"""Serving: the Gradio page and the /v1 API on one port, with optional login and share link."""
from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

from app.api import make_router
from app.gate import Gate
from app.ui import build_ui, css
from core.errors import StudioError

log = logging.getLogger("vallex.server")


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the studio to the network
    port: int = 7860
    share: bool = False  # Gradio share link (needs the internet)
    auth: list[tuple[str, str]] | None = None  # page logins
    api_key: str | None = None  # bearer key for /v1; default when auth is on: any password
    max_queue: int = 16  # waiting requests before "busy"
    preload: bool = True  # load the models in the background once the page is up (--lazy: on first use)


def api_keys(opts: ServerOptions) -> set[str] | None:
    """Which bearer keys /v1 accepts: the API key, else the login passwords, else none needed."""
    if opts.api_key:
        return {opts.api_key}
    if opts.auth:
        return {password for _, password in opts.auth}
    return None


def launch_kwargs(opts: ServerOptions) -> dict:
    """What goes to `gr.Blocks.launch` (kept apart so tests can check the options reach it)."""
    return dict(server_name=opts.host, server_port=opts.port, share=opts.share,
                auth=opts.auth, auth_message="Log in to the VALL-E X studio." if opts.auth else None,
                prevent_thread_lock=True, show_error=False, ssr_mode=False, quiet=False,
                max_file_size="50mb", css=css())


def check_address(host: str, port: int) -> None:
    """Raise a StudioError that says what is wrong with --host / --port before Gradio tries them
    (its own message is "Cannot find empty port" whatever the cause: a busy port, a name that does
    not resolve, an address of another machine, a port that needs root)."""
    fix_host = ("Give --host an address of this machine: 127.0.0.1 (this computer only) or 0.0.0.0 "
                "(your network).")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise StudioError(f"Cannot listen on {host!r}: no such address ({getattr(e, 'strerror', e)}).",
                          fix_host) from e
    with socket.socket(family, kind, proto) as s:
        # what uvicorn sets too: a port left in TIME_WAIT by a studio just stopped is free to reuse
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                other = port + 1 if port < 65535 else 7860
                raise StudioError(f"Port {port} on {host} is already in use (another program, or a "
                                  "studio that is still running).",
                                  f"Stop it, or pick another: --port {other}.") from e
            if e.errno == errno.EADDRNOTAVAIL:
                raise StudioError(f"Cannot listen on {host}: it is not an address of this machine.",
                                  fix_host) from e
            if e.errno == errno.EACCES:
                raise StudioError(f"Port {port} needs administrator rights (ports below 1024 do).",
                                  "Pick a port from 1024 up, e.g. --port 7860.") from e
            raise StudioError(f"Cannot listen on {host}:{port} ({e.strerror}).",
                              "Pick another --host or --port.") from e


def serve(studio, opts: ServerOptions, block: bool = True):
    """Start the page and the API; blocks until Ctrl-C unless `block` is False."""
    if opts.share and not opts.auth:
        log.warning("Sharing without --auth: anyone who gets the public link can use this studio "
                    "(and your saved voices). Add --auth USER:PASS to require a login.")
    if opts.host not in ("127.0.0.1", "localhost") and not opts.auth:
        log.warning("Listening on %s without --auth: everyone on your network can use the studio.",
                    opts.host)
    if opts.api_key and not opts.auth:
        log.warning("--api-key protects /v1 only: the page and its Gradio endpoints (gradio_client) stay "
                    "open to whoever can reach this port. Add --auth USER:PASS to require a login for them too.")
    check_address(opts.host, opts.port)
    gate = Gate(max_waiting=opts.max_queue)
    demo = build_ui(studio, gate)
    demo.queue(max_size=opts.max_queue, default_concurrency_limit=1)
    try:
        _, local_url, share_url = demo.launch(**launch_kwargs(opts))
    except OSError as e:
        raise StudioError(f"Cannot listen on {opts.host}:{opts.port} ({e}).",
                          "Another program may use that port: pick another with --port.") from e
    demo.app.include_router(make_router(studio, gate, api_keys(opts)))
    if opts.share and not share_url:
        log.warning("Could not open the public share link (it needs the internet and Gradio's "
                    "frpc tunnel). The studio keeps running locally at %s", local_url)
    log.info("Studio ready at %s (API: POST %sv1/audio/speech, GET %sv1/voices)",
             local_url, local_url, local_url)
    if opts.preload and studio.preload() is not None:
        log.info("loading the models in the background (the first take waits for them if it comes sooner)")
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo
