/**
 * The ZIP container as PyTorch uses it: every entry stored (no compression), data aligned to
 * 64 bytes, ZIP64 end records.
 *
 * The reader works on an open file descriptor with positioned reads: it reads the end records and
 * the central directory, validates every offset and size against the file size, and then reads one
 * entry (or one byte range of an entry) at a time. A 7 GB checkpoint is never held in memory.
 *
 * Layout reminder (all integers little-endian):
 *
 * ```
 * [local header 30 B + name + extra][data] … [central directory headers 46 B + name + extra + comment]
 * [ZIP64 EOCD record 56 B][ZIP64 locator 20 B][EOCD 22 B + comment]
 * ```
 *
 * Sizes and CRCs are taken from the central directory: torch (miniz) writes zeros in the local
 * headers and puts the real values in data descriptors after each entry. The data of an entry starts
 * at local-header offset + 30 + local name length + local extra length. The local header's name must
 * equal the directory's, as Python's `zipfile` requires.
 */
import * as fs from "node:fs";
import { withOpenFile } from "./open";
import { writeFileAtomic, type WriteOptions } from "./atomic";
import { CorruptFileError, UnsupportedFileError } from "./errors";

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const EOCD_SIZE = 22;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
const MAX_COMMENT = 0xffff;
/** Largest central directory accepted (≈ 10 million entries; torch files have a few thousand). */
const MAX_DIRECTORY = 512 * 1024 * 1024;
/** Extra-field id torch uses for alignment padding ("FB"). */
export const PADDING_EXTRA_ID = 0x4246;
/** Alignment torch gives every entry's data. */
export const ZIP_ALIGNMENT = 64;

// ---- CRC-32 (IEEE 802.3, the ZIP polynomial) --------------------------------------------------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 of `data`, continuing from `crc` (pass the previous result to checksum in pieces). */
export function crc32(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

// ---- reader -----------------------------------------------------------------------------------

/** One entry of the central directory, with its data range resolved and validated. */
export interface ZipEntry {
  name: string;
  /** Compression method (0 = stored; anything else is refused on read). */
  method: number;
  /** CRC-32 of the uncompressed data, from the central directory. */
  crc32: number;
  /** Stored size in bytes (= uncompressed size for stored entries). */
  size: number;
  /** Offset of the local header. */
  headerOffset: number;
  /** Absolute offset of the first data byte. */
  dataStart: number;
}

export interface ZipReaderOptions {
  /**
   * Entries up to this size are CRC-checked whenever they are read whole (default 256 MiB).
   * Bigger entries are not checked, so that opening a multi-GB checkpoint does not mean hashing it.
   */
  crcLimit?: number;
}

/** A ZIP archive opened for positioned reads. Call `close()` when done. */
export class ZipReader {
  /** Entries in central-directory order. */
  readonly entries: ZipEntry[];
  private readonly byName: Map<string, ZipEntry>;
  private fd: number | undefined;
  private readonly crcLimit: number;

  private constructor(
    readonly file: string,
    fd: number,
    readonly fileSize: number,
    entries: ZipEntry[],
    opts: ZipReaderOptions,
  ) {
    this.fd = fd;
    this.entries = entries;
    this.byName = new Map(entries.map((e) => [e.name, e]));
    this.crcLimit = opts.crcLimit ?? 256 * 1024 * 1024;
  }

  /** Open `file` and validate its directory; throws an error naming the file and the problem. */
  static open(file: string, opts: ZipReaderOptions = {}): ZipReader {
    return withOpenFile(file, (fd) => ZipReader.fromFd(file, fd, opts));
  }

  /** Read the directory of an already open file; the reader takes ownership of `fd`. */
  static fromFd(file: string, fd: number, opts: ZipReaderOptions = {}): ZipReader {
    const size = fs.fstatSync(fd).size;
    const entries = readDirectory(file, fd, size);
    return new ZipReader(file, fd, size, entries, opts);
  }

  /** The entry called `name`, or undefined. */
  entry(name: string): ZipEntry | undefined {
    return this.byName.get(name);
  }

  /** Read a whole entry; it is CRC-checked when `verify` is true, or by default when ≤ crcLimit. */
  read(entry: ZipEntry | string, verify?: boolean): Buffer {
    const e = this.resolve(entry);
    const bytes = this.readRange(e, 0, e.size);
    if (verify ?? e.size <= this.crcLimit) {
      const c = crc32(bytes);
      if (c !== e.crc32) {
        throw new CorruptFileError(this.file, `entry "${e.name}" is damaged: CRC-32 is ${hex(c)} but the directory says ${hex(e.crc32)}`);
      }
    }
    return bytes;
  }

  /** Read `length` bytes of an entry starting `start` bytes into its data (no CRC check). */
  readRange(entry: ZipEntry | string, start: number, length: number): Buffer {
    const e = this.resolve(entry);
    if (e.method !== 0) {
      throw new UnsupportedFileError(
        this.file,
        `entry "${e.name}" is compressed (method ${e.method}); torch files store entries uncompressed — re-save the file with torch.save`,
      );
    }
    if (!(start >= 0 && length >= 0 && start + length <= e.size)) {
      throw new CorruptFileError(this.file, `read of ${length} bytes at ${start} runs past entry "${e.name}" (${e.size} bytes)`);
    }
    return readAt(this.file, this.handle(), e.dataStart + start, length);
  }

  /** Release the file descriptor (idempotent). */
  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }

  private handle(): number {
    if (this.fd === undefined) throw new Error(`${this.file}: file already closed`);
    return this.fd;
  }

  private resolve(entry: ZipEntry | string): ZipEntry {
    if (typeof entry !== "string") return entry;
    const e = this.byName.get(entry);
    if (!e) throw new Error(`${this.file}: no entry named "${entry}"`);
    return e;
  }
}

/**
 * Read exactly `length` bytes at `position`, or fail naming the file. Callers check `length` against
 * the file's size first; a length no Buffer can have (or an allocation that fails) still becomes an
 * error naming the file rather than a bare RangeError.
 */
export function readAt(file: string, fd: number, position: number, length: number): Buffer {
  if (!Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(position) || position < 0) {
    throw new CorruptFileError(file, `cannot read ${length} bytes at offset ${position}`);
  }
  let buf: Buffer;
  try {
    buf = Buffer.allocUnsafe(length);
  } catch (err) {
    if (err instanceof RangeError)
      throw new UnsupportedFileError(file, `cannot read ${length} bytes at once (more than one buffer can hold here)`);
    throw err;
  }
  let got = 0;
  while (got < length) {
    const n = fs.readSync(fd, buf, got, length - got, position + got);
    if (n === 0) throw new CorruptFileError(file, `file ends early (wanted ${length} bytes at offset ${position})`);
    got += n;
  }
  return buf;
}

function hex(n: number): string {
  return "0x" + n.toString(16).padStart(8, "0");
}

function u64(file: string, buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptFileError(file, `${what} ${v} is impossibly large`);
  return Number(v);
}

/** Locate the end records, then read and validate every central-directory entry. */
function readDirectory(file: string, fd: number, fileSize: number): ZipEntry[] {
  const bad = (msg: string): never => {
    throw new CorruptFileError(file, `not a valid zip archive: ${msg}`);
  };
  if (fileSize < EOCD_SIZE) bad(`only ${fileSize} bytes long`);

  // The classic EOCD sits in the last 22 + (comment ≤ 65535) bytes; scan backwards for it.
  const tailLen = Math.min(fileSize, EOCD_SIZE + MAX_COMMENT);
  const tailStart = fileSize - tailLen;
  const tail = readAt(file, fd, tailStart, tailLen);
  let eocd = -1;
  for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
    if (tail.readUInt32LE(i) === SIG_EOCD && i + EOCD_SIZE + tail.readUInt16LE(i + 20) <= tailLen) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) bad("no end-of-central-directory record (the file may be truncated)");
  const eocdPos = tailStart + eocd;
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  if (tail.readUInt16LE(eocd + 4) !== 0 || tail.readUInt16LE(eocd + 6) !== 0) bad("multi-disk archives are not supported");

  // ZIP64: a locator right before the EOCD points at the ZIP64 EOCD record with 64-bit values.
  let dirEnd = eocdPos;
  if (eocdPos >= ZIP64_LOCATOR_SIZE) {
    const loc = readAt(file, fd, eocdPos - ZIP64_LOCATOR_SIZE, ZIP64_LOCATOR_SIZE);
    if (loc.readUInt32LE(0) === SIG_ZIP64_LOCATOR) {
      const recPos = u64(file, loc, 8, "ZIP64 record offset");
      if (recPos + ZIP64_EOCD_SIZE > eocdPos - ZIP64_LOCATOR_SIZE) bad(`ZIP64 end record offset ${recPos} is out of range`);
      const rec = readAt(file, fd, recPos, ZIP64_EOCD_SIZE);
      if (rec.readUInt32LE(0) !== SIG_ZIP64_EOCD) bad(`no ZIP64 end record at offset ${recPos}`);
      count = u64(file, rec, 32, "entry count");
      cdSize = u64(file, rec, 40, "central directory size");
      cdOffset = u64(file, rec, 48, "central directory offset");
      dirEnd = recPos;
    } else if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      bad("ZIP64 values announced but no ZIP64 locator found");
    }
  }
  if (cdOffset + cdSize > dirEnd) bad(`central directory (${cdSize} bytes at ${cdOffset}) runs past its end records`);
  if (cdSize > MAX_DIRECTORY) bad(`central directory of ${cdSize} bytes is implausibly large`);
  if (count * CENTRAL_SIZE > cdSize) bad(`${count} entries cannot fit in a ${cdSize}-byte central directory`);

  const cd = readAt(file, fd, cdOffset, cdSize);
  const entries: ZipEntry[] = [];
  const names = new Set<string>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + CENTRAL_SIZE > cdSize || cd.readUInt32LE(p) !== SIG_CENTRAL) bad(`central directory entry ${i} is damaged`);
    const flags = cd.readUInt16LE(p + 8);
    const method = cd.readUInt16LE(p + 10);
    const crc = cd.readUInt32LE(p + 16);
    let csize = cd.readUInt32LE(p + 20);
    let usize = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let headerOffset = cd.readUInt32LE(p + 42);
    const end = p + CENTRAL_SIZE + nameLen + extraLen + commentLen;
    const p0 = p;
    if (end > cdSize) bad(`central directory entry ${i} runs past the directory`);
    const name = cd.toString("utf8", p + CENTRAL_SIZE, p + CENTRAL_SIZE + nameLen);
    // ZIP64 extended information (id 1) holds the 64-bit values of the fields set to 0xFFFFFFFF.
    let x = p + CENTRAL_SIZE + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = cd.readUInt16LE(x);
      const len = cd.readUInt16LE(x + 2);
      if (x + 4 + len > xEnd) bad(`extra field of "${name}" runs past its entry`);
      if (id === 1) {
        let q = x + 4;
        const take = (what: string): number => {
          if (q + 8 > x + 4 + len) bad(`ZIP64 field of "${name}" is too short`);
          const v = u64(file, cd, q, what);
          q += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = take("entry size");
        if (csize === 0xffffffff) csize = take("entry size");
        if (headerOffset === 0xffffffff) headerOffset = take("entry offset");
      }
      x += 4 + len;
    }
    p = end;
    if (names.has(name)) bad(`entry "${name}" appears twice`);
    names.add(name);
    if (flags & 1) throw new UnsupportedFileError(file, `entry "${name}" is encrypted`);
    if (method === 0 && csize !== usize) bad(`stored entry "${name}" has different sizes (${csize} vs ${usize})`);
    if (headerOffset + LOCAL_SIZE + nameLen > cdOffset)
      bad(`entry "${name}" starts at ${headerOffset}, outside the data area (file size ${fileSize})`);
    const local = readAt(file, fd, headerOffset, LOCAL_SIZE + nameLen);
    if (local.readUInt32LE(0) !== SIG_LOCAL) bad(`entry "${name}" has no local header at offset ${headerOffset}`);
    // The local header must name the same entry, byte for byte (Python's zipfile refuses a mismatch
    // too): a reader that trusts the local name would otherwise see a different archive.
    const localNameLen = local.readUInt16LE(26);
    if (localNameLen !== nameLen || !local.subarray(LOCAL_SIZE).equals(cd.subarray(p0 + CENTRAL_SIZE, p0 + CENTRAL_SIZE + nameLen))) {
      const localName = local.toString("utf8", LOCAL_SIZE, LOCAL_SIZE + Math.min(localNameLen, nameLen));
      bad(
        `entry "${name}" is called ${JSON.stringify(localNameLen === nameLen ? localName : `${localName}…`)} in its local header (${localNameLen} bytes); the directory and the header must agree`,
      );
    }
    const dataStart = headerOffset + LOCAL_SIZE + local.readUInt16LE(26) + local.readUInt16LE(28);
    if (dataStart + csize > cdOffset) {
      bad(`entry "${name}" (${csize} bytes at ${dataStart}) runs past the data area (file size ${fileSize})`);
    }
    entries.push({ name, method, crc32: crc, size: csize, headerOffset, dataStart });
  }

  // Entries must not share bytes: a crafted archive could otherwise make two names alias one blob.
  const sorted = [...entries].sort((a, b) => a.headerOffset - b.headerOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.headerOffset < prev.dataStart + prev.size) bad(`entries "${prev.name}" and "${cur.name}" overlap`);
  }
  return entries;
}

// ---- writer -----------------------------------------------------------------------------------

/** One entry to write: its name and a function that makes its bytes when its turn comes. */
export interface ZipSource {
  name: string;
  data: Uint8Array | (() => Uint8Array);
}

/**
 * The bytes of a ZIP archive of stored entries, as torch writes them, in chunks: each entry's data
 * is produced only when it is written, so a large archive never needs one contiguous buffer.
 *
 * Each local header carries the real CRC and sizes (no data descriptors) and an "FB" extra field of
 * `Z` padding that puts the data at a multiple of 64 bytes. The archive ends with a ZIP64 end record
 * and locator, then the classic end record, like torch's writer.
 */
export function* zipChunks(sources: Iterable<ZipSource>): Generator<Uint8Array> {
  const central: Buffer[] = [];
  const seen = new Set<string>();
  let pos = 0;
  let count = 0;
  for (const src of sources) {
    if (seen.has(src.name)) throw new Error(`zip writer: entry "${src.name}" given twice`);
    seen.add(src.name);
    const data = typeof src.data === "function" ? src.data() : src.data;
    const name = Buffer.from(src.name, "utf8");
    const size = data.byteLength;
    const crc = crc32(data);
    const big = size >= 0xffffffff || pos >= 0xffffffff;

    // Local header: ZIP64 sizes go in an extra field when they do not fit in 32 bits.
    const z64Local = size >= 0xffffffff ? 20 : 0;
    const before = pos + LOCAL_SIZE + name.length + z64Local + 4;
    const pad = (ZIP_ALIGNMENT - (before % ZIP_ALIGNMENT)) % ZIP_ALIGNMENT;
    const local = Buffer.alloc(LOCAL_SIZE + name.length + z64Local + 4 + pad);
    local.writeUInt32LE(SIG_LOCAL, 0);
    local.writeUInt16LE(big ? 45 : 20, 4);
    local.writeUInt16LE(0x0800, 6); // UTF-8 names
    local.writeUInt16LE(0, 8); // stored
    local.writeUInt32LE(0, 10); // time/date: 1980-00-00 00:00, as torch writes
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(z64Local ? 0xffffffff : size, 18);
    local.writeUInt32LE(z64Local ? 0xffffffff : size, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(z64Local + 4 + pad, 28);
    name.copy(local, LOCAL_SIZE);
    let x = LOCAL_SIZE + name.length;
    if (z64Local) {
      local.writeUInt16LE(1, x);
      local.writeUInt16LE(16, x + 2);
      local.writeBigUInt64LE(BigInt(size), x + 4);
      local.writeBigUInt64LE(BigInt(size), x + 12);
      x += 20;
    }
    local.writeUInt16LE(PADDING_EXTRA_ID, x);
    local.writeUInt16LE(pad, x + 2);
    local.fill(0x5a, x + 4); // "Z"

    // Central header: 64-bit values for the fields that overflow, in the order the spec fixes.
    const z64: bigint[] = [];
    if (size >= 0xffffffff) z64.push(BigInt(size), BigInt(size));
    if (pos >= 0xffffffff) z64.push(BigInt(pos));
    const z64Len = z64.length ? 4 + 8 * z64.length : 0;
    const cen = Buffer.alloc(CENTRAL_SIZE + name.length + z64Len);
    cen.writeUInt32LE(SIG_CENTRAL, 0);
    cen.writeUInt16LE(big ? 45 : 20, 4);
    cen.writeUInt16LE(big ? 45 : 20, 6);
    cen.writeUInt16LE(0x0800, 8);
    cen.writeUInt32LE(crc, 16);
    cen.writeUInt32LE(Math.min(size, 0xffffffff), 20);
    cen.writeUInt32LE(Math.min(size, 0xffffffff), 24);
    cen.writeUInt16LE(name.length, 28);
    cen.writeUInt16LE(z64Len, 30);
    cen.writeUInt32LE(Math.min(pos, 0xffffffff), 42);
    name.copy(cen, CENTRAL_SIZE);
    if (z64Len) {
      cen.writeUInt16LE(1, CENTRAL_SIZE + name.length);
      cen.writeUInt16LE(8 * z64.length, CENTRAL_SIZE + name.length + 2);
      z64.forEach((v, i) => cen.writeBigUInt64LE(v, CENTRAL_SIZE + name.length + 4 + 8 * i));
    }
    central.push(cen);

    yield local;
    yield data;
    pos += local.length + size;
    count++;
  }

  const cdOffset = pos;
  const cdSize = central.reduce((s, b) => s + b.length, 0);
  for (const c of central) yield c;
  const recPos = cdOffset + cdSize;

  const end = Buffer.alloc(ZIP64_EOCD_SIZE + ZIP64_LOCATOR_SIZE + EOCD_SIZE);
  end.writeUInt32LE(SIG_ZIP64_EOCD, 0);
  end.writeBigUInt64LE(BigInt(ZIP64_EOCD_SIZE - 12), 4);
  end.writeUInt16LE(45, 12);
  end.writeUInt16LE(45, 14);
  end.writeBigUInt64LE(BigInt(count), 24);
  end.writeBigUInt64LE(BigInt(count), 32);
  end.writeBigUInt64LE(BigInt(cdSize), 40);
  end.writeBigUInt64LE(BigInt(cdOffset), 48);
  const l = ZIP64_EOCD_SIZE;
  end.writeUInt32LE(SIG_ZIP64_LOCATOR, l);
  end.writeBigUInt64LE(BigInt(recPos), l + 8);
  end.writeUInt32LE(1, l + 16);
  const e = l + ZIP64_LOCATOR_SIZE;
  end.writeUInt32LE(SIG_EOCD, e);
  end.writeUInt16LE(Math.min(count, 0xffff), e + 8);
  end.writeUInt16LE(Math.min(count, 0xffff), e + 10);
  end.writeUInt32LE(Math.min(cdSize, 0xffffffff), e + 12);
  end.writeUInt32LE(Math.min(cdOffset, 0xffffffff), e + 16);
  yield end;
}

/** Write a ZIP archive of stored entries atomically (see `zipChunks`). */
export function writeZip(file: string, sources: Iterable<ZipSource>, opts: WriteOptions = {}): void {
  writeFileAtomic(file, zipChunks(sources), opts);
}
