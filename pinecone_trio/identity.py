"""Identities: ed25519 key pairs that name nodes, and the order of keys.

A node's public key *is* its overlay address (Pinecone, research §2.1). Keys are
ordered as Pinecone orders them: plain lexicographic comparison of the 32 bytes, the
first byte most significant. `PublicKey` is a `bytes` subclass so that comparison,
hashing and slicing are the fast built-in ones; the router engine and the simulator
compare millions of keys.

Key files hold one line: the 32-byte ed25519 seed as 64 lowercase hex digits. They are
created with mode 0600 and refused when group or others can read them.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from typing import Final, final

import nacl.exceptions
import nacl.signing

from .errors import KeyFileError

PUBLIC_KEY_SIZE: Final = 32
SEED_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64

#: The largest possible key (Pinecone's `FullMask`), the initial "worst" watermark.
FULL_MASK: Final = b"\xff" * PUBLIC_KEY_SIZE

_KEY_FILE_MAX_BYTES: Final = 1024
#: A key file's contents, once stripped: the seed as exactly 64 hex digits.
_HEX_SEED: Final = re.compile(f"[0-9a-fA-F]{{{2 * SEED_SIZE}}}")


def _naming(exc: OSError, path: str, doing: str) -> OSError:
    """`exc` again (the same errno, so the same subclass) as a failure to do `doing` on
    `path`: the path a caller asked for, not the temporary file next to it."""
    if exc.errno is None:
        return OSError(f"{doing} {path}: {exc}")
    return OSError(exc.errno, f"{doing}: {exc.strerror or exc}", path)


@final
class PublicKey(bytes):
    """A 32-byte ed25519 public key, ordered as Pinecone orders keys.

    Construct from 32 raw bytes (`PublicKey(raw)`) or from hex (`PublicKey.from_hex`).

    Raises:
        ValueError: if the value is not exactly 32 bytes.
        TypeError: if the value is not bytes-like (hex text goes to `from_hex`).
    """

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | memoryview) -> PublicKey:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            hint = " (for 64 hex digits use PublicKey.from_hex)" if isinstance(value, str) else ""
            raise TypeError(
                f"a public key is {PUBLIC_KEY_SIZE} bytes, not {type(value).__name__}{hint}"
            )
        raw = bytes(value)
        if len(raw) != PUBLIC_KEY_SIZE:
            raise ValueError(f"a public key is {PUBLIC_KEY_SIZE} bytes, not {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Parse a key from 64 hex digits (either case, surrounding space ignored).

        Raises:
            ValueError: if `text` is not 64 hex digits.
        """
        text = text.strip()
        if len(text) != 2 * PUBLIC_KEY_SIZE:
            raise ValueError(f"a public key is {2 * PUBLIC_KEY_SIZE} hex digits, not {len(text)}")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ValueError(f"not a hex public key: {text!r}") from None

    def short(self) -> str:
        """The first 8 hex digits, for logs and tables."""
        return self[:4].hex()

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's ed25519 signature of `message`."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            nacl.signing.VerifyKey(bytes(self)).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"PublicKey({self.hex()})"

    def __str__(self) -> str:
        return self.hex()


@final
class Identity:
    """An ed25519 key pair: a node's (or a log's) name and its ability to sign.

    Use `Identity.generate()`, `Identity.from_seed(seed)` or `Identity.load(path)`.
    """

    __slots__ = ("_public_key", "_seed", "_signing_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an ed25519 seed is {SEED_SIZE} bytes, not {len(seed)}")
        self._seed = bytes(seed)
        self._signing_key = nacl.signing.SigningKey(self._seed)
        self._public_key = PublicKey(bytes(self._signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        """A new random key pair."""
        return cls(os.urandom(SEED_SIZE))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The key pair libsodium's `crypto_sign_seed_keypair` makes from `seed`."""
        return cls(seed)

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed. Keep it secret."""
        return self._seed

    @property
    def secret_key(self) -> bytes:
        """The 64-byte libsodium secret key (seed followed by public key)."""
        return self._seed + bytes(self._public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ed25519 signature of `message`."""
        return self._signing_key.sign(message).signature

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the seed to `path` as hex, creating the file with mode 0600.

        Raises:
            KeyFileError: if the file exists and `overwrite` is false.
            OSError: if the file cannot be written (its directory is missing or not
                writable, the disk is full); `filename` is `path`, not the temporary
                file the key is written to first.
        """
        name = os.fspath(path)
        if not overwrite and os.path.lexists(name):
            raise KeyFileError(f"{name}: key file already exists")
        try:
            self._save(name, overwrite)
        except OSError as exc:
            raise _naming(exc, name, "cannot write key file") from exc

    def _save(self, name: str, overwrite: bool) -> None:
        # Written whole to a temporary file beside it, then put in place at once: a
        # reader (another process starting on the same path) or a crash never sees a
        # half-written key file.
        directory = os.path.dirname(name) or "."
        fd, tmp = tempfile.mkstemp(prefix=".key-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(self._seed.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, name)
            else:
                try:
                    os.link(tmp, name)  # fails if the name exists: never replaces a key
                except FileExistsError:
                    raise KeyFileError(f"{name}: key file already exists") from None
                except OSError:  # a file system without hard links: create exclusively
                    self._save_exclusive(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _save_exclusive(self, name: str) -> None:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{name}: key file already exists") from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(self._seed.hex() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by `save`.

        Raises:
            KeyFileError: if the file is missing, readable by group or others, or does
                not hold exactly 64 hex digits.
        """
        name = os.fspath(path)
        try:
            # Checked and read through one descriptor (no swap between the two), opened
            # without blocking: a FIFO or device is refused, never waited on.
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise KeyFileError(f"{name}: not a key file (not a regular file)")
                if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                    raise KeyFileError(
                        f"{name}: key file is accessible by others"
                        f" (mode {st.st_mode & 0o777:o}); run: chmod 600 " + name
                    )
                if st.st_size > _KEY_FILE_MAX_BYTES:
                    raise KeyFileError(f"{name}: not a key file (too large)")
                raw = os.read(fd, _KEY_FILE_MAX_BYTES + 1)
            finally:
                os.close(fd)
            text = raw.decode("ascii")
        except FileNotFoundError:
            raise KeyFileError(f"{name}: no such key file") from None
        except UnicodeDecodeError:
            raise KeyFileError(f"{name}: not a key file (not text)") from None
        except OSError as exc:
            raise KeyFileError(f"{name}: cannot read key file: {exc.strerror}") from None
        text = text.strip()
        if len(text) != 2 * SEED_SIZE:
            raise KeyFileError(f"{name}: not a key file (expected {2 * SEED_SIZE} hex digits)")
        if not _HEX_SEED.fullmatch(text):  # (`bytes.fromhex` would skip inner spaces)
            raise KeyFileError(f"{name}: not a key file (not hex)")
        return cls(bytes.fromhex(text))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key file at `path`, creating it with a new key pair if absent."""
        if not os.path.exists(path):
            identity = cls.generate()
            try:
                identity.save(path)
            except KeyFileError:
                pass  # another process created it first: use theirs
            else:
                return identity
        return cls.load(path)

    def __repr__(self) -> str:
        return f"Identity(public_key={self._public_key.hex()})"
