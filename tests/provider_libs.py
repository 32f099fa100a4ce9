"""Signs provider callbacks with the providers' own official Python libraries, so the tests
check Herald's verification against the providers' implementations rather than its own.

    provider_libs.py twilio-sign <auth token> <url> <form body>     -> X-Twilio-Signature
    provider_libs.py sendgrid-keypair <dir>                          -> writes private.pem,
                                                                        prints the base64 DER public key
    provider_libs.py sendgrid-sign <dir> <timestamp> <payload file>  -> signature (base64 DER)

`sendgrid-sign` signs with `cryptography` (ECDSA P-256, SHA-256 over timestamp + payload) and
then checks the signature with the sendgrid library's own EventWebhook verifier, failing if the
library does not accept it: the signature is SendGrid's scheme, not one we made up.
"""

import base64
import os
import sys
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def twilio_sign(token, url, body):
    from twilio.request_validator import RequestValidator

    params = dict(parse_qsl(body, keep_blank_values=True))
    validator = RequestValidator(token)
    signature = validator.compute_signature(url, params)
    assert validator.validate(url, params, signature), "twilio's validator refused its own signature"
    return signature


def sendgrid_keypair(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    with open(os.path.join(directory, "private.pem"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_sign(directory, timestamp, payload_file):
    from sendgrid.helpers.eventwebhook import EventWebhook

    with open(os.path.join(directory, "private.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(payload_file, "rb") as f:
        payload = f.read()
    signature = base64.b64encode(
        key.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    ).decode()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hook = EventWebhook()
    public = hook.convert_public_key_to_ecdsa(base64.b64encode(der).decode())
    assert hook.verify_signature(
        payload.decode(), signature, timestamp, public
    ), "the sendgrid library refused the signature"
    return signature


def main(argv):
    command = argv[1]
    if command == "twilio-sign":
        print(twilio_sign(argv[2], argv[3], argv[4]))
    elif command == "sendgrid-keypair":
        print(sendgrid_keypair(argv[2]))
    elif command == "sendgrid-sign":
        print(sendgrid_sign(argv[2], argv[3], argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
