/**
 * A strict JSON reader for headers read from files (safetensors headers and the JSON strings in
 * their metadata), working on the raw bytes.
 *
 * `JSON.parse` is too forgiving for a file format that the reference reader (the Rust `safetensors`
 * crate, via serde_json) checks strictly: it keeps the last of two equal keys without a word, it
 * cannot tell `4` from `4.0`, and decoding the bytes first replaces invalid UTF-8 with U+FFFD. This
 * reader refuses duplicate keys, keeps whether a number was written as an integer, refuses invalid
 * UTF-8 and unpaired surrogate escapes inside strings (naming the string), and limits nesting depth
 * so that `[[[[…` cannot exhaust the stack. Objects come back as `Map`s, so a key such as
 * `__proto__` is just a key. It runs in one pass over the bytes: time and memory are linear in the
 * input.
 *
 * Callers that want to look at members one by one (to stop early, or to name the member a
 * problem is in) use `JsonReader` directly; `parseStrictJson` reads one whole value.
 */

/** A number written with a fraction or an exponent (`4.0`, `1e3`): never a count or an offset. */
export class JsonFloat {
  constructor(readonly value: number) {}
}

/** A JSON value as read here: integers as `number` (or `bigint` past 2^53 − 1), objects as `Map`. */
export type StrictJson = null | boolean | number | bigint | JsonFloat | string | StrictJson[] | Map<string, StrictJson>;

/** Where and why the JSON text is not acceptable. `offset` is a byte offset into the input. */
export class StrictJsonError extends Error {
  constructor(
    readonly offset: number,
    readonly reason: string,
  ) {
    super(`${reason} (at byte ${offset})`);
    this.name = "StrictJsonError";
  }
}

/** Deepest nesting of arrays and objects accepted (serde_json's default limit is 128). */
export const MAX_JSON_DEPTH = 128;

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** The one-character escapes JSON allows, by the byte after the backslash. */
const SIMPLE_ESCAPES: Readonly<Record<number, string>> = {
  0x22: '"',
  0x5c: "\\",
  0x2f: "/",
  0x62: "\b",
  0x66: "\f",
  0x6e: "\n",
  0x72: "\r",
  0x74: "\t",
};

/** Show a byte string the way a message can quote it: valid UTF-8 as text, other bytes as \xNN. */
export function quoteBytes(b: Uint8Array, max = 80): string {
  let out = "";
  for (let i = 0; i < b.length && out.length < max; i++) {
    const c = b[i]!;
    out += c >= 0x20 && c < 0x7f && c !== 0x22 && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`;
  }
  return `"${out}${out.length >= max ? "…" : ""}"`;
}

/** A cursor over JSON bytes. Methods throw `StrictJsonError` on anything that is not strict JSON. */
export class JsonReader {
  pos = 0;
  /** The same bytes as a Buffer, for slicing strings out without copying. */
  private readonly buf: Buffer;
  /** `maxDepth`: deepest nesting of arrays and objects accepted. */
  constructor(
    readonly bytes: Uint8Array,
    readonly maxDepth = MAX_JSON_DEPTH,
  ) {
    this.buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Throw a `StrictJsonError` at the current position (or at `at`). */
  fail(reason: string, at = this.pos): never {
    throw new StrictJsonError(at, reason);
  }

  /** Skip JSON whitespace (space, tab, CR, LF only). */
  skipSpace(): void {
    const b = this.bytes;
    let p = this.pos;
    while (p < b.length) {
      const c = b[p]!;
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      p++;
    }
    this.pos = p;
  }

  /** The next non-space byte, without consuming it (-1 at the end). */
  peek(): number {
    this.skipSpace();
    return this.pos < this.bytes.length ? this.bytes[this.pos]! : -1;
  }

  /** Consume `ch` (after optional whitespace) or fail. */
  expect(ch: string): void {
    if (this.peek() !== ch.charCodeAt(0))
      this.fail(this.pos < this.bytes.length ? `expected '${ch}'` : `expected '${ch}', found the end of the text`);
    this.pos++;
  }

  /**
   * Inside an object or array after an item: consume `,` and return true, or consume `close` and
   * return false.
   */
  more(close: string): boolean {
    const c = this.peek();
    if (c === 0x2c) {
      this.pos++;
      return true;
    }
    if (c === close.charCodeAt(0)) {
      this.pos++;
      return false;
    }
    return this.fail(`expected ',' or '${close}'`);
  }

  /** Fail unless only whitespace is left. */
  end(): void {
    this.skipSpace();
    if (this.pos !== this.bytes.length) this.fail("unexpected text after the end of the JSON value");
  }

  /** Read a string; invalid UTF-8 and unpaired surrogates are refused, quoting the raw bytes. */
  string(): string {
    this.skipSpace();
    const b = this.bytes;
    const start = this.pos;
    if (b[start] !== 0x22) this.fail("expected a string");
    let p = start + 1;
    let ascii = true;
    let escapes = false;
    for (;;) {
      if (p >= b.length) this.fail("string is not closed", start);
      const c = b[p]!;
      if (c === 0x22) break;
      if (c < 0x20) this.fail("control character inside a string (it must be escaped)", p);
      if (c === 0x5c) {
        escapes = true;
        p += 2;
        continue;
      }
      if (c >= 0x80) ascii = false;
      p++;
    }
    this.pos = p + 1;
    if (ascii && !escapes) return this.buf.toString("latin1", start + 1, p); // the common case: no copy
    const raw = b.subarray(start + 1, p);
    let text = "";
    if (!ascii) {
      try {
        text = utf8.decode(raw);
      } catch {
        this.fail(`string ${quoteBytes(raw)} is not valid UTF-8`, start);
      }
    }
    return escapes ? this.unescape(raw, start) : text;
  }

  private unescape(raw: Uint8Array, start: number): string {
    const parts: string[] = [];
    let from = 0;
    let i = 0;
    const units: number[] = [];
    const flushUnits = (): void => {
      for (let k = 0; k < units.length; k++) {
        const u = units[k]!;
        const next = units[k + 1];
        if (u >= 0xd800 && u < 0xdc00 && next !== undefined && next >= 0xdc00 && next < 0xe000) {
          parts.push(String.fromCharCode(u, next));
          k++;
        } else if (u >= 0xd800 && u < 0xe000) {
          this.fail(`string ${quoteBytes(raw)} has an unpaired surrogate escape \\u${u.toString(16)}`, start);
        } else parts.push(String.fromCharCode(u));
      }
      units.length = 0;
    };
    while (i < raw.length) {
      if (raw[i] !== 0x5c) {
        i++;
        continue;
      }
      if (i > from) {
        flushUnits();
        parts.push(utf8.decode(raw.subarray(from, i)));
      }
      const e = raw[i + 1];
      if (e === 0x75) {
        const hex = latin1(raw.subarray(i + 2, i + 6));
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail(`bad \\u escape in string ${quoteBytes(raw)}`, start);
        units.push(parseInt(hex, 16));
        i += 6;
      } else if (e !== undefined && Object.hasOwn(SIMPLE_ESCAPES, e)) {
        flushUnits();
        parts.push(SIMPLE_ESCAPES[e]!);
        i += 2;
      } else {
        this.fail(`bad escape in string ${quoteBytes(raw)}`, start);
      }
      from = i;
    }
    flushUnits();
    if (from < raw.length) parts.push(utf8.decode(raw.subarray(from)));
    return parts.join("");
  }

  /** Read a number: integers as `number` (or `bigint` past 2^53 − 1), others as `JsonFloat`. */
  number(): number | bigint | JsonFloat {
    this.skipSpace();
    const b = this.bytes;
    const start = this.pos;
    let p = start;
    if (b[p] === 0x2d) p++;
    const digits0 = p;
    if (b[p] === 0x30) p++;
    else while (p < b.length && b[p]! >= 0x30 && b[p]! <= 0x39) p++;
    if (p === digits0) this.fail("expected a value");
    let integer = true;
    if (b[p] === 0x2e) {
      integer = false;
      p++;
      const d = p;
      while (p < b.length && b[p]! >= 0x30 && b[p]! <= 0x39) p++;
      if (p === d) this.fail("expected digits after '.'", p);
    }
    if (b[p] === 0x65 || b[p] === 0x45) {
      integer = false;
      p++;
      if (b[p] === 0x2b || b[p] === 0x2d) p++;
      const d = p;
      while (p < b.length && b[p]! >= 0x30 && b[p]! <= 0x39) p++;
      if (p === d) this.fail("expected digits in the exponent", p);
    }
    this.pos = p;
    if (integer && p - start <= 15) {
      // Up to 15 digits: exact in a double, so add them up directly (offsets and shapes are these).
      let n = 0;
      for (let q = b[start] === 0x2d ? start + 1 : start; q < p; q++) n = n * 10 + (b[q]! - 0x30);
      return b[start] === 0x2d ? -n : n;
    }
    const text = this.buf.toString("latin1", start, p);
    if (!integer) return new JsonFloat(Number(text));
    const n = Number(text);
    return Number.isSafeInteger(n) ? n : BigInt(text);
  }

  /** Read any value (objects as `Map`, duplicate keys refused), nesting at most `maxDepth`. */
  value(depth = 0): StrictJson {
    const c = this.peek();
    if (c === 0x7b || c === 0x5b) {
      if (depth >= this.maxDepth) this.fail(`nested more than ${this.maxDepth} levels deep`);
      this.pos++;
      if (c === 0x5b) {
        const out: StrictJson[] = [];
        if (this.peek() === 0x5d) {
          this.pos++;
          return out;
        }
        do out.push(this.value(depth + 1));
        while (this.more("]"));
        return out;
      }
      const out = new Map<string, StrictJson>();
      if (this.peek() === 0x7d) {
        this.pos++;
        return out;
      }
      do {
        const at = this.pos;
        const k = this.string();
        if (out.has(k)) this.fail(`key ${JSON.stringify(k)} appears twice in one object`, at);
        this.expect(":");
        out.set(k, this.value(depth + 1));
      } while (this.more("}"));
      return out;
    }
    if (c === 0x22) return this.string();
    if (this.word("true")) return true;
    if (this.word("false")) return false;
    if (this.word("null")) return null;
    if (c === -1) this.fail("expected a value, found the end of the text");
    return this.number();
  }

  private word(w: string): boolean {
    const b = this.bytes;
    for (let i = 0; i < w.length; i++) if (b[this.pos + i] !== w.charCodeAt(i)) return false;
    this.pos += w.length;
    return true;
  }
}

function latin1(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");
}

/** Parse a whole JSON text strictly (see the module comment); throws `StrictJsonError`. */
export function parseStrictJson(text: string | Uint8Array, maxDepth = MAX_JSON_DEPTH): StrictJson {
  const r = new JsonReader(typeof text === "string" ? Buffer.from(text, "utf8") : text, maxDepth);
  const v = r.value();
  r.end();
  return v;
}
