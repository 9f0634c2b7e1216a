"""Image dimensions read from the file header, before anything is decoded.

OpenCV cannot report an image's size without decoding it, so a decompression bomb (a small file
that decodes to billions of pixels) would be allocated before it could be refused. These parsers
read ``(width, height)`` from the first bytes of PNG, JPEG, GIF, BMP, WebP and TIFF files: the
formats OpenCV reads that image datasets use. Any other format (or a header these parsers do not
understand) gives ``None``: such an image is checked after decoding instead, and OpenCV itself
refuses images over 2**30 pixels (its ``OPENCV_IO_MAX_IMAGE_PIXELS``).

All parsers take the file's bytes and never raise on malformed input: they return ``None``.
"""

from __future__ import annotations

Size = tuple[int, int]  # (width, height)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, 0xD8} | set(range(0xD0, 0xD8))  # markers without a length field


def _uint(data: bytes, start: int, size: int, order: str) -> int | None:
    chunk = data[start : start + size]
    return int.from_bytes(chunk, order) if len(chunk) == size else None


def _png_size(data: bytes) -> Size | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = _uint(data, 16, 4, "big"), _uint(data, 20, 4, "big")
    return None if width is None or height is None else (width, height)


def jpeg_layout(data: bytes) -> tuple[Size | None, int | None]:
    """``(size, offset of the first start-of-scan marker)`` of a JPEG, each None if not found.

    Walks the marker segments from the start: APPn (EXIF, thumbnails), tables and the frame header
    all come before the first scan.
    """
    size, i, n = None, 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return size, None  # not at a marker: a malformed header
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker == 0xDA:
            return size, i
        if marker == 0xD9:
            return size, None
        length = _uint(data, i + 2, 2, "big")
        if length is None or length < 2:
            return size, None
        if marker in _JPEG_SOF and size is None:
            height, width = _uint(data, i + 5, 2, "big"), _uint(data, i + 7, 2, "big")
            if height is None or width is None:
                return None, None
            size = (width, height)
        i += 2 + length
    return size, None


def jpeg_is_truncated(data: bytes) -> bool:
    """True if a JPEG has no end-of-image marker after its first scan.

    Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
    ``FF D9`` after the first start-of-scan can only be the end of the image. (OpenCV 4 decodes a
    truncated JPEG without an error, filling the missing part with grey.) Bytes after the end marker
    are allowed: some cameras append data there.
    """
    _, scan = jpeg_layout(data)
    return scan is None or data.find(b"\xff\xd9", scan) < 0


def _gif_size(data: bytes) -> Size | None:
    width, height = _uint(data, 6, 2, "little"), _uint(data, 8, 2, "little")
    return None if width is None or height is None else (width, height)


def _bmp_size(data: bytes) -> Size | None:
    header = _uint(data, 14, 4, "little")
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = _uint(data, 18, 2, "little"), _uint(data, 20, 2, "little")
        return None if width is None or height is None else (width, height)
    width, height = data[18:22], data[22:26]
    if len(width) != 4 or len(height) != 4:
        return None
    # Signed: a negative height means rows stored top-down.
    return abs(int.from_bytes(width, "little", signed=True)), abs(int.from_bytes(height, "little", signed=True))


def _webp_size(data: bytes) -> Size | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1 and height - 1
        width, height = _uint(data, 24, 3, "little"), _uint(data, 27, 3, "little")
        return None if width is None or height is None else (width + 1, height + 1)
    if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1 after the 0x2F signature byte
        bits = _uint(data, 21, 4, "little")
        return None if bits is None else ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 ":  # lossy: 14-bit width and height in the key frame header
        width, height = _uint(data, 26, 2, "little"), _uint(data, 28, 2, "little")
        return None if width is None or height is None else (width & 0x3FFF, height & 0x3FFF)
    return None


def _tiff_size(data: bytes) -> Size | None:
    """Width and height of the first image (tags 256 and 257 of the first IFD); classic TIFF only."""
    order = "little" if data[:2] == b"II" else "big"
    ifd = _uint(data, 4, 4, order)
    count = None if ifd is None else _uint(data, ifd, 2, order)
    if count is None:
        return None
    found = {}
    for k in range(count):
        entry = ifd + 2 + 12 * k
        tag, kind = _uint(data, entry, 2, order), _uint(data, entry + 2, 2, order)
        if tag is None or kind is None:
            return None
        if tag in (256, 257):
            value = _uint(data, entry + 8, 2 if kind == 3 else 4, order)  # SHORT or LONG
            if value is None:
                return None
            found[tag] = value
    return (found[256], found[257]) if len(found) == 2 else None


def image_size(data: bytes) -> Size | None:
    """``(width, height)`` from the header of a PNG, JPEG, GIF, BMP, WebP or TIFF file, else None."""
    if data.startswith(PNG_SIGNATURE):
        return _png_size(data)
    if data.startswith(JPEG_SOI):
        return jpeg_layout(data)[0]
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_size(data)
    if data.startswith(b"BM"):
        return _bmp_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(data)
    return None
