"""PKCS#11 keys behind the ``cryptography`` private-key interface.

The CA key (and, on robots with a secure element, the device key) is generated inside the token as
sensitive and non-extractable; ``TokenEcKey`` lets ``cryptography`` build CSRs and certificates with it.
SoftHSM 2.6 only offers raw ECDSA, so we hash in software, sign the digest in the token and DER-encode r||s.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from base.logs import get_logger
from provisioning.errors import (
    KeyExists,
    PinLocked,
    PinMissing,
    Pkcs11ModuleError,
    TokenKeyNotFound,
    TokenNotFound,
    WrongPin,
)

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN_ENV = "ROOMBA_PKCS11_PIN"
_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_lock = threading.Lock()
_libs: dict[str, Any] = {}

log = get_logger("provisioning.hsm")


@dataclass(frozen=True)
class TokenKeyRef:
    """Where a token key lives (never the PIN): what ``ca-pkcs11.json`` / ``device-pkcs11.json`` hold."""

    module: str
    token_label: str
    key_label: str

    def to_json(self) -> dict[str, str]:
        return {"module": self.module, "token_label": self.token_label, "key_label": self.key_label}


def resolve_pin(pin: str | None = None, pin_file: str | os.PathLike[str] | None = None) -> str:
    """The PIN from the argument, a file (first line) or ``$ROOMBA_PKCS11_PIN``; never from argv."""
    if pin:
        return pin
    if pin_file:
        try:
            value = Path(pin_file).read_text().splitlines()
        except OSError as exc:
            raise PinMissing(f"cannot read PIN file {pin_file}: {exc.strerror}") from None
        if value and value[0].strip():
            return value[0].strip()
        raise PinMissing(f"PIN file {pin_file} is empty")
    env = os.environ.get(PIN_ENV)
    if env:
        return env
    raise PinMissing(f"a token PIN is needed: set {PIN_ENV} or pass --pin-file FILE")


def load_module(module: str) -> Any:
    """Load (once per process) and initialise a PKCS#11 module."""
    with _lock:
        lib = _libs.get(module)
        if lib is None:
            if not Path(module).exists():
                raise Pkcs11ModuleError(f"PKCS#11 module {module} does not exist")
            try:
                lib = pkcs11.lib(module)
            except p11e.PKCS11Error as exc:
                raise Pkcs11ModuleError(f"cannot load PKCS#11 module {module}: {exc}") from None
            _libs[module] = lib
        return lib


def _find_token(module: str, label: str) -> Any:
    """The token labelled ``label``.

    No C_Finalize/C_Initialize retry: that would cut every other session in the process (awscrt's too), so
    a token initialised after this process loaded the module stays invisible until the process restarts.
    """
    lib = load_module(module)
    try:
        return lib.get_token(token_label=label)
    except p11e.NoSuchToken:
        raise TokenNotFound(f"no PKCS#11 token labelled {label!r} in {module}") from None
    except p11e.MultipleTokensReturned:
        raise TokenNotFound(f"more than one token is labelled {label!r} in {module}") from None


def _raise_login_error(exc: Exception, label: str) -> NoReturn:
    if isinstance(exc, p11e.PinIncorrect | p11e.PinInvalid | p11e.PinLenRange):
        raise WrongPin(f"token {label!r} rejected the PIN") from None
    if isinstance(exc, p11e.PinLocked):
        raise PinLocked(f"token {label!r} has locked its user PIN; reset it with the SO PIN") from None
    if isinstance(exc, p11e.UserAlreadyLoggedIn):
        raise Pkcs11ModuleError(
            f"token {label!r} is already open in this process; close the other CA or key that uses it "
            "first (PKCS#11 logs a whole process out when one session ends)"
        ) from None
    raise Pkcs11ModuleError(f"cannot log in to token {label!r}: {type(exc).__name__}") from None


def open_session(module: str, token_label: str, pin: str, *, rw: bool = False) -> Any:
    """A logged-in session on the token, with our specific errors for the usual failures."""
    token = _find_token(module, token_label)
    try:
        return token.open(user_pin=pin, rw=rw)
    except p11e.PKCS11Error as exc:
        _raise_login_error(exc, token_label)


@contextmanager
def session(module: str, token_label: str, pin: str, *, rw: bool = False) -> Iterator[Any]:
    sess = open_session(module, token_label, pin, rw=rw)
    try:
        yield sess
    finally:
        sess.close()


def _public_from_token(pub: Any) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(encode_ec_public_key(pub))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Pkcs11ModuleError("token returned a public key that is not EC")
    return key


def generate_ec_key(sess: Any, key_label: str, curve: str = "secp256r1") -> ec.EllipticCurvePublicKey:
    """Generate a sensitive, non-extractable EC key pair in the token; refuse if the label is taken."""
    if curve not in _CURVES:
        raise ValueError(f"unsupported curve {curve!r}; use secp256r1 or secp384r1")
    existing = list(sess.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: key_label}))
    if existing:
        raise KeyExists(
            f"token already holds a private key labelled {key_label!r}; refusing to replace it "
            "(pick another --key-label, or delete that object if it is an orphan)"
        )
    key_id = os.urandom(16)
    params = sess.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
    )
    pub, _priv = params.generate_keypair(
        store=True,
        label=key_label,
        id=key_id,
        public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
        private_template={
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DERIVE: False,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
        },
    )
    log.info("hsm.key.generated", key_label=key_label, curve=curve)
    return _public_from_token(pub)


class TokenEcKey(ec.EllipticCurvePrivateKey):
    """An EC private key that stays in a PKCS#11 token; ``cryptography`` signs certificates through it."""

    def __init__(self, sess: Any, key_label: str, ref: TokenKeyRef | None = None) -> None:
        self._session = sess
        self.ref = ref
        try:
            self._priv = sess.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
            pub = sess.get_key(object_class=ObjectClass.PUBLIC_KEY, label=key_label)
        except p11e.NoSuchKey:
            raise TokenKeyNotFound(f"token has no EC key pair labelled {key_label!r}") from None
        except p11e.MultipleObjectsReturned:
            raise TokenKeyNotFound(
                f"token has several keys labelled {key_label!r}; labels must be unique"
            ) from None
        self._public = _public_from_token(pub)
        self._sign_lock = threading.Lock()

    @property
    def pkcs11_private_key(self) -> Any:
        """The python-pkcs11 key object (for attribute checks such as CKA_EXTRACTABLE)."""
        return self._priv

    def close(self) -> None:
        self._session.close()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("only ECDSA signatures are supported by a token EC key")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        with self._sign_lock:
            try:
                raw = self._priv.sign(digest, mechanism=Mechanism.ECDSA)
            except p11e.PKCS11Error as exc:
                raise Pkcs11ModuleError(f"token refused to sign: {type(exc).__name__}") from None
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise NotImplementedError("ECDH is not offered by a signing-only token key")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise TypeError("a token key is non-extractable: its private value cannot be read")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise TypeError("a token key is non-extractable: it cannot be serialised")

    def __copy__(self) -> TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenEcKey:
        return self


def open_key(ref: TokenKeyRef, pin: str) -> TokenEcKey:
    """Open a session and wrap the labelled key; the session lives as long as the returned key."""
    sess = open_session(ref.module, ref.token_label, pin)
    try:
        return TokenEcKey(sess, ref.key_label, ref)
    except BaseException:
        sess.close()
        raise
