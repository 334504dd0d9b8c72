/**
 * PNG text chunks: where AUTOMATIC1111 keeps an image's generation parameters (the "parameters"
 * key) and where its PNG Info tab reads them.
 *
 * - Writing (`addPngText`) follows Pillow's `PngInfo.add_text`, which A1111 uses: a value that
 *   Latin-1 can spell goes in a `tEXt` chunk, any other in an uncompressed UTF-8 `iTXt` chunk. The
 *   chunks are inserted right after `IHDR`; the pixels are untouched.
 * - Reading (`readPngText`) takes `tEXt`, `zTXt` and `iTXt` (compressed or not), as Pillow's
 *   `image.info` does; a key seen twice keeps its last value. Each chunk's CRC is checked, and a
 *   compressed chunk may expand to at most `MAX_TEXT_BYTES`. Errors name the file.
 */
import * as zlib from "node:zlib";

/** The eight bytes every PNG starts with. */
export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Most bytes a compressed text chunk may expand to (a guard against decompression bombs). */
export const MAX_TEXT_BYTES = 8 << 20;

let crcTable: Uint32Array | undefined;

/** CRC-32 (ISO 3309, as PNG uses) of the concatenated buffers. */
export function crc32(...parts: Uint8Array[]): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (const p of parts) for (let i = 0; i < p.length; i++) c = crcTable[(c ^ p[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** True when `bytes` starts with the PNG signature. */
export function isPng(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && PNG_SIGNATURE.equals(Buffer.from(bytes.buffer, bytes.byteOffset, 8));
}

function chunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const tail = Buffer.alloc(4);
  tail.writeUInt32BE(crc32(head.subarray(4), data), 0);
  return Buffer.concat([head, data, tail]);
}

/** Pillow's rule for a text chunk's keyword: 1–79 Latin-1 characters. */
function checkKey(key: string): void {
  if (key.length < 1 || key.length > 79 || !/^[\x20-\x7e\xa1-\xff]+$/.test(key)) {
    throw new Error(`PNG text key ${JSON.stringify(key)} must be 1–79 printable Latin-1 characters (e.g. "parameters")`);
  }
}

/** A text chunk as Pillow writes it: `tEXt` when Latin-1 can spell the value, else `iTXt`. */
export function textChunk(key: string, value: string): Buffer {
  checkKey(key);
  const sep = Buffer.from([0]);
  if (/^[\x00-\xff]*$/.test(value)) return chunk("tEXt", Buffer.concat([Buffer.from(key, "latin1"), sep, Buffer.from(value, "latin1")]));
  // keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
  return chunk("iTXt", Buffer.concat([Buffer.from(key, "latin1"), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(value, "utf8")]));
}

/** One chunk's place in a PNG. */
interface ChunkSpan {
  type: string;
  start: number;
  data: Buffer;
}

/** Walk the chunks, checking lengths and (for the types in `crcFor`) CRCs. */
function chunks(png: Buffer, where: string, crcFor: (type: string) => boolean): ChunkSpan[] {
  if (!isPng(png)) throw new Error(`${where}: not a PNG image (it does not start with the PNG signature)`);
  const out: ChunkSpan[] = [];
  let pos = 8;
  while (pos < png.length) {
    if (pos + 12 > png.length) throw new Error(`${where}: the PNG is truncated (a chunk header at byte ${pos} runs past the end)`);
    const len = png.readUInt32BE(pos);
    const type = png.toString("latin1", pos + 4, pos + 8);
    if (!/^[A-Za-z]{4}$/.test(type)) throw new Error(`${where}: damaged PNG (chunk at byte ${pos} has the type ${JSON.stringify(type)})`);
    if (len > 0x7fffffff || pos + 12 + len > png.length)
      throw new Error(`${where}: the PNG is truncated (chunk ${type} at byte ${pos} claims ${len} bytes)`);
    const data = png.subarray(pos + 8, pos + 8 + len);
    if (crcFor(type) && crc32(png.subarray(pos + 4, pos + 8), data) !== png.readUInt32BE(pos + 8 + len)) {
      throw new Error(`${where}: damaged PNG (chunk ${type} at byte ${pos} fails its CRC check)`);
    }
    out.push({ type, start: pos, data });
    pos += 12 + len;
    if (type === "IEND") break;
  }
  if (out[0]?.type !== "IHDR") throw new Error(`${where}: damaged PNG (the first chunk is not IHDR)`);
  return out;
}

/**
 * A copy of `png` with text chunks added after `IHDR` (see the module comment). Existing chunks,
 * text ones included, are kept.
 */
export function addPngText(png: Uint8Array, entries: Iterable<readonly [string, string]>, where = "PNG"): Buffer {
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const ihdr = chunks(buf, where, (t) => t === "IHDR")[0]!;
  const end = ihdr.start + 12 + ihdr.data.length;
  const added = [...entries].map(([k, v]) => textChunk(k, v));
  return Buffer.concat([buf.subarray(0, end), ...added, buf.subarray(end)]);
}

function inflate(data: Buffer, where: string, type: string): Buffer {
  try {
    return zlib.inflateSync(data, { maxOutputLength: MAX_TEXT_BYTES });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ERR_BUFFER_TOO_LARGE" || /maxOutputLength|larger than/i.test(e.message)) {
      throw new Error(`${where}: a compressed ${type} chunk expands past ${MAX_TEXT_BYTES} bytes; refusing it`);
    }
    throw new Error(`${where}: a compressed ${type} chunk is damaged (${e.message})`);
  }
}

/** The text chunks of a PNG as key → value (see the module comment). */
export function readPngText(png: Uint8Array, where = "PNG"): Map<string, string> {
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const text = new Map<string, string>();
  const isText = (t: string): boolean => t === "tEXt" || t === "zTXt" || t === "iTXt";
  for (const c of chunks(buf, where, isText)) {
    if (!isText(c.type)) continue;
    const nul = c.data.indexOf(0);
    if (nul < 1) throw new Error(`${where}: damaged PNG (a ${c.type} chunk has no keyword)`);
    const key = c.data.toString("latin1", 0, nul);
    const rest = c.data.subarray(nul + 1);
    if (c.type === "tEXt") {
      text.set(key, rest.toString("latin1"));
    } else if (c.type === "zTXt") {
      if (rest[0] !== 0) throw new Error(`${where}: zTXt chunk "${key}" uses compression method ${rest[0]}; PNG defines only 0`);
      text.set(key, inflate(rest.subarray(1), where, "zTXt").toString("latin1"));
    } else {
      const [flag, method] = [rest[0], rest[1]];
      const lang = rest.indexOf(0, 2);
      const tkey = lang < 0 ? -1 : rest.indexOf(0, lang + 1);
      if (flag === undefined || method === undefined || lang < 0 || tkey < 0)
        throw new Error(`${where}: damaged PNG (iTXt chunk "${key}" is cut short)`);
      const body = rest.subarray(tkey + 1);
      if (flag !== 0 && method !== 0)
        throw new Error(`${where}: iTXt chunk "${key}" uses compression method ${method}; PNG defines only 0`);
      text.set(key, (flag ? inflate(body, where, "iTXt") : body).toString("utf8"));
    }
  }
  return text;
}
