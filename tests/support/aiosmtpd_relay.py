"""An SMTP relay the project did not write (aiosmtpd, from PyPI) for the `smtp` kind's tests.

    python aiosmtpd_relay.py --mode plain|starttls|tls [--cert PEM --key PEM]
                             [--login USER --password-env VAR]

Binds 127.0.0.1 port 0 and prints one JSON line per event on stdout, flushed:
  {"event": "listening", "port": N}                        once, first
  {"event": "auth", "mechanism": M, "login": U, "ok": B}    each AUTH (never the password)
  {"event": "message", "mail_from", "rcpt_tos", "data", "tls", "auth"}   each accepted message
`starttls` requires STARTTLS before anything else; `tls` is TLS from the first byte. With
`--login` AUTH is required and only AUTH LOGIN is offered. Exits when stdin closes.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def emit(**event):
    print(json.dumps(event), flush=True)


class Recorder:
    async def handle_DATA(self, server, session, envelope):
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        emit(
            event="message",
            mail_from=envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            data=envelope.content.decode("utf-8", "replace"),
            tls=tls,
            auth=session.auth_data if isinstance(session.auth_data, str) else None,
        )
        return "250 2.0.0 Ok: queued"


def authenticator_for(login, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        given = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == login.encode()
            and auth_data.password == password.encode()
        )
        emit(event="auth", mechanism=mechanism, login=given, ok=ok)
        if not ok:
            # Not handled: aiosmtpd answers "535 5.7.8 Authentication credentials invalid".
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=f"{mechanism}:{given}")

    return authenticate


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["plain", "starttls", "tls"], required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--login")
    parser.add_argument("--password-env")
    args = parser.parse_args()

    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    options = {"hostname": "relay.test"}
    if args.mode == "starttls":
        options.update(tls_context=context, require_starttls=True)
    if args.login:
        options.update(
            authenticator=authenticator_for(args.login, os.environ[args.password_env]),
            auth_required=True,
            auth_exclude_mechanism=["PLAIN"],
            # aiosmtpd only counts STARTTLS as TLS; implicit TLS is TLS from the first byte.
            auth_require_tls=args.mode == "starttls",
        )

    loop = asyncio.get_running_loop()
    handler = Recorder()
    server = await loop.create_server(
        lambda: SMTP(handler, **options),
        host="127.0.0.1",
        port=0,
        ssl=context if args.mode == "tls" else None,
    )
    emit(event="listening", port=server.sockets[0].getsockname()[1])
    # The test holds our stdin: when it ends (or dies), so do we.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
