"""Stand-ins for the providers without a published API document Prism could serve, built on
the reference implementations rather than on Herald's code:

    provider_standins.py smtp <port> <dir> <user> <password>
        aiosmtpd requiring STARTTLS and AUTH, with a certificate for 127.0.0.1 signed by a
        test CA written to <dir>/cert.pem. Recipients starting with "reject" get 550, with "later"
        451 the first time. Each message taken is appended to <dir>/received.jsonl.
    provider_standins.py fcm <port> <dir> <project>
        writes a service-account key to <dir>/sa.json (token_uri on this server); POST /token
        checks the RS256 assertion with Google's own google-auth library (signature, audience,
        expiry, scope) and issues an access token; POST /v1/projects/<project>/messages:send
        takes sends with a valid token (tokens starting with "unregistered" get FCM's 404
        UNREGISTERED); GET /stats counts tokens issued and sends. Sends go to
        <dir>/received.jsonl.

Each writes <dir>/ready once it listens.
"""

import datetime
import ipaddress
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def append(directory, record):
    with open(os.path.join(directory, "received.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def certificates(directory):
    """A CA (written to <dir>/cert.pem, what Herald's ca_file trusts) and a server certificate
    for 127.0.0.1 it signed (rustls, rightly, refuses a CA certificate used as the server's)."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, public, signer, ca):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "herald test CA")])
    ca = build(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    leaf = build(name, ca_name, key.public_key(), ca_key, False)
    pem = serialization.Encoding.PEM
    with open(os.path.join(directory, "cert.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    chain = os.path.join(directory, "server.pem")
    with open(chain, "wb") as f:
        f.write(leaf.public_bytes(pem))
    key_path = os.path.join(directory, "key.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return chain, key_path


def smtp(port, directory, user, password):
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = certificates(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    deferred = set()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        return AuthResult(success=ok)

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address.startswith("reject"):
                return "550 5.1.1 no such user here"
            if address.startswith("later") and address not in deferred:
                deferred.add(address)
                return "451 4.3.0 try again later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            from email import message_from_bytes

            message = message_from_bytes(envelope.content)
            append(
                directory,
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "tls": session.ssl is not None,
                    "authenticated": session.authenticated,
                    "message_id": message.get("Message-ID"),
                    "subject": message.get("Subject"),
                    "list_unsubscribe": message.get("List-Unsubscribe"),
                    "body": message.get_payload(decode=True).decode(errors="replace").strip(),
                },
            )
            return "250 2.0.0 Ok: queued as Q%d" % len(deferred)

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    open(os.path.join(directory, "ready"), "w").close()
    while True:
        time.sleep(3600)


def fcm(port, directory, project):
    from google.auth import jwt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token_uri = "http://127.0.0.1:%d/token" % port
    account = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "it-key-1",
        "private_key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "client_email": "herald-it@%s.iam.gserviceaccount.com" % project,
        "client_id": "1",
        "token_uri": token_uri,
    }
    with open(os.path.join(directory, "sa.json"), "w") as f:
        json.dump(account, f)
    state = {"tokens": set(), "issued": 0, "sends": 0, "refused_assertions": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with lock:
                self.answer(200, {"tokens_issued": state["issued"], "sends": state["sends"],
                                  "refused_assertions": state["refused_assertions"]})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path == "/token":
                form = dict(parse_qsl(body.decode()))
                try:
                    assert form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    claims = jwt.decode(form["assertion"], certs=public_pem, audience=token_uri)
                    assert claims["iss"] == account["client_email"], claims
                    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging", claims
                except Exception as e:  # noqa: BLE001 - any refusal is a 400 to the client
                    with lock:
                        state["refused_assertions"] += 1
                    return self.answer(400, {"error": "invalid_grant", "error_description": str(e)})
                with lock:
                    state["issued"] += 1
                    token = "ya29.it-%d" % state["issued"]
                    state["tokens"].add(token)
                return self.answer(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
            if self.path == "/v1/projects/%s/messages:send" % project:
                bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
                with lock:
                    known = bearer in state["tokens"]
                if not known:
                    return self.answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
                message = json.loads(body)["message"]
                append(directory, message)
                if message["token"].startswith("unregistered"):
                    return self.answer(404, {"error": {
                        "code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                     "errorCode": "UNREGISTERED"}]}})
                with lock:
                    state["sends"] += 1
                    n = state["sends"]
                return self.answer(200, {"name": "projects/%s/messages/0:%d" % (project, n)})
            self.answer(404, {"error": "no such path"})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    open(os.path.join(directory, "ready"), "w").close()
    server.serve_forever()


def main(argv):
    if argv[1] == "smtp":
        smtp(int(argv[2]), argv[3], argv[4], argv[5])
    elif argv[1] == "fcm":
        fcm(int(argv[2]), argv[3], argv[4])
    else:
        raise SystemExit("unknown stand-in %s" % argv[1])


if __name__ == "__main__":
    main(sys.argv)
