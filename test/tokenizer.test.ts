/**
 * Tokenizer tests on a hand-made CLIP-style vocabulary (test/fixtures/tokenizer/):
 * 44 tokens (ids 0..43; BOS "<|startoftext|>" = 42, EOS "<|endoftext|>" = 43) and 15 merges.
 * Every expected id below was worked out by hand from the BPE rules; the symbol is in the comment.
 *
 * Merge ranks (merges.txt): 0 "p h", 1 "o t", 2 "ph ot", 3 "phot o</w>", 4 "c a", 5 "ca t</w>",
 * 6 "o f</w>", 7 "d o", 8 "do g</w>", 9 "' s</w>", 10 "o t</w>", 11 "h o", 12 "l a", 13 "la la", 14 "! !</w>".
 */
import { describe, expect, it } from "vitest";
import { ClipTokenizer, SimpleTokenizer, bytesToUnicode, cleanText, splitIntoChunks } from "../src/text/tokenizer";
import { fixture } from "./helpers/tf";

const BOS = 42;
const EOS = 43;
const tok = ClipTokenizer.fromFiles(fixture("tokenizer"));

/** BOS + ids + EOS padded with EOS to 77 (the expected framing, written out independently). */
function framed(ids: number[]): number[] {
  return [BOS, ...ids, ...new Array<number>(77 - 1 - ids.length).fill(EOS)];
}

describe("bytesToUnicode", () => {
  it("is GPT-2's table: printable bytes are themselves, the rest shift to U+0100…", () => {
    const t = bytesToUnicode();
    expect(t.length).toBe(256);
    expect(new Set(t).size).toBe(256);
    expect(t[0x61]).toBe("a");
    expect(t[0xc3]).toBe("Ã");
    expect(t[0x00]).toBe("Ā"); // first non-printable byte → U+0100
    expect(t[0x20]).toBe("Ġ"); // space, the famous GPT-2 "Ġ" (U+0100 + 32)
    expect(t[0x0a]).toBe("Ċ"); // newline → U+010A
    expect(t[0x81]).toBe("ģ"); // 0x81 is the 36th non-printable byte (0x00–0x20, 0x7F, 0x80, 0x81) → U+0123
  });
});

describe("ClipTokenizer (hand-made BPE fixture)", () => {
  it("reads BOS/EOS from the vocabulary and pads with EOS", () => {
    expect(tok.bosId).toBe(BOS);
    expect(tok.eosId).toBe(EOS);
    expect(tok.padId).toBe(EOS);
    expect(tok.vocabSize).toBe(44);
  });

  it("merges by rank, not by position", () => {
    // "photo": p h o t o</w> → (p h)#0 → (o t)#1 → (ph ot)#2 → (phot o</w>)#3 = photo</w>
    expect(tok.bpe("photo")).toEqual(["photo</w>"]);
    // "hot": h o t</w>; (h o) is rank 11 but (o t</w>) rank 10 wins → h | ot</w>
    expect(tok.bpe("hot")).toEqual(["h", "ot</w>"]);
    // "lalala": (l a)#12 merges both occurrences → la la l a</w>; (la la)#13 → lala l a</w>
    expect(tok.bpe("lalala")).toEqual(["lala", "l", "a</w>"]);
    // "cats": (c a)#4 → ca t s</w>; no rule for (ca t) or (t s</w>)
    expect(tok.bpe("cats")).toEqual(["ca", "t", "s</w>"]);
  });

  it("encodes a prompt: words, punctuation, BOS/EOS framing and EOS padding to 77", () => {
    const out = tok.encode("A photo of a cat.");
    // a</w>=1 photo</w>=10 of</w>=13 a</w>=1 cat</w>=4 .</w>=26
    expect(out.ids).toEqual([framed([1, 10, 13, 1, 4, 26])]);
    expect(out.ids[0]!.length).toBe(77);
    expect(out.tokenCounts).toEqual([6]);
    expect(out.truncated).toEqual([false]);
    expect(out.warnings).toEqual([]);
  });

  it("folds case and collapses whitespace", () => {
    expect(cleanText("  A   PHOTO\n of\tA CAT. ")).toBe("a photo of a cat.");
    expect(tok.encode("  A   PHOTO\n of\tA CAT. ").ids).toEqual(tok.encode("a photo of a cat.").ids);
  });

  it("splits contractions, punctuation runs and single digits", () => {
    // dog</w>=17 's</w>=19 h=6 ot</w>=22 !!</w>=29 (the "!!" run is one word: ! !</w> → #14)
    expect(tok.tokenize("dog's hot!!")).toEqual([17, 19, 6, 22, 29]);
    // digits are one word each: 2</w>=30 0</w>=31 2</w>=30 4</w>=32
    expect(tok.tokenize("2024")).toEqual([30, 31, 30, 32]);
    // lala=25 l=23 a</w>=1
    expect(tok.tokenize("lalala")).toEqual([25, 23, 1]);
  });

  it("falls back to UTF-8 bytes for characters without a token, and unescapes HTML", () => {
    // "café": c a f Ã ©</w> (é = C3 A9 → "Ã" "©") → (c a)#4 → ca=3 f=33 Ã=34 ©</w>=35
    expect(tok.tokenize("café")).toEqual([3, 33, 34, 35]);
    // "ā" = C4 81 → "Ä" (C4 is printable) and "ģ" (0x81 shifted to U+0123) → Ä=36 ģ</w>=37
    expect(tok.tokenize("ā")).toEqual([36, 37]);
    // "&amp;" → "&" → &</w>=38
    expect(tok.tokenize("&amp;")).toEqual([38]);
  });

  it("maps symbols missing from a cut-down vocabulary to EOS with a warning", () => {
    const out = tok.encode("z cat");
    expect(out.ids[0]!.slice(0, 4)).toEqual([BOS, EOS, 4, EOS]);
    expect(out.warnings.length).toBe(1);
    expect(out.warnings[0]).toContain("z</w>");
  });

  it("truncates to 75 tokens in truncate mode and says so", () => {
    const text = Array(80).fill("a").join(" ");
    const out = tok.encode(text, { longPrompts: "truncate" });
    expect(out.ids).toEqual([[BOS, ...Array<number>(75).fill(1), EOS]]);
    expect(out.chunks).toBe(1);
    expect(out.tokenCounts).toEqual([80]);
    expect(out.truncated).toEqual([true]);
    expect(out.warnings.join("\n")).toMatch(/80 tokens.*5 dropped/);
  });

  it("chunks prompts longer than 75 tokens into 77-id windows (A1111)", () => {
    const text = Array(80).fill("a").join(" ");
    const out = tok.encode(text);
    expect(out.chunks).toBe(2);
    expect(out.truncated).toEqual([false]);
    expect(out.ids).toEqual([[BOS, ...Array<number>(75).fill(1), EOS, ...framed([1, 1, 1, 1, 1])]]);
    // exactly 75 tokens still fit one window
    expect(tok.encode(Array(75).fill("a").join(" ")).chunks).toBe(1);
    // an empty prompt is one empty window
    expect(tok.encode("").ids).toEqual([framed([])]);
  });

  it("moves the words after a nearby comma into the next window (comma backtrack)", () => {
    // 70 × a, one comma, 10 × a = 81 tokens; ,</w> = 27
    const text = `${Array(70).fill("a").join(" ")}, ${Array(10).fill("a").join(" ")}`;
    const out = tok.encode(text);
    // the window fills at 70 a + , + 4 a; the comma is 4 tokens back (≤ 20), so those 4 a move on
    expect(out.ids[0]).toEqual([...framed([...Array<number>(70).fill(1), 27]), ...framed(Array<number>(10).fill(1))]);
    const plain = tok.encode(text, { commaBacktrack: 0 });
    expect(plain.ids[0]).toEqual([...framed([...Array<number>(70).fill(1), 27, 1, 1, 1, 1]), ...framed(Array<number>(6).fill(1))]);
  });

  it("gives every prompt of a batch the same number of windows (empty windows are BOS + EOS…)", () => {
    const long = Array(80).fill("a").join(" ");
    const out = tok.encode(["a cat", long]);
    expect(out.chunks).toBe(2);
    expect(out.ids[0]).toEqual([...framed([1, 4]), ...framed([])]);
    expect(out.ids[1]!.length).toBe(154);
  });

  it("splitIntoChunks follows A1111's rule exactly on a small window", () => {
    // window 4, comma = 9: tokens 1 2 9 3 4 5 → at the 6th token the window [1 2 9 3] is full and
    // the comma is 2 back → [1 2 9] | [3 4 5]
    expect(splitIntoChunks([1, 2, 9, 3, 4, 5], 4, 9, 20)).toEqual([
      [1, 2, 9],
      [3, 4, 5],
    ]);
    expect(splitIntoChunks([1, 2, 9, 3, 4, 5], 4, 9, 0)).toEqual([
      [1, 2, 9, 3],
      [4, 5],
    ]);
    expect(splitIntoChunks([], 4, 9, 20)).toEqual([[]]);
  });

  it("rejects bad files with errors that name them", () => {
    expect(() => ClipTokenizer.fromFiles("/nonexistent/dir")).toThrow(/nonexistent.*vocab\.json/);
    expect(() => new ClipTokenizer({ a: 0 }, [])).toThrow(/startoftext/);
    expect(() => new ClipTokenizer({ "<|startoftext|>": 0, "<|endoftext|>": 1 }, ["abc"])).toThrow(/merge rule 1/);
  });
});

describe("SimpleTokenizer", () => {
  const simple = new SimpleTokenizer(["a", "cat", "photo", "of", ","]);
  it("maps words to ids 4…, unknown words to <unk>, frames with <bos>/<eos> and pads with <pad>", () => {
    const out = simple.encode("A photo of a dog, cat!");
    // <bos>=1 a=4 photo=6 of=7 a=4 dog→<unk>=3 ,=8 cat=5 !→<unk>=3 <eos>=2, then <pad>=0
    expect(out.ids).toEqual([[1, 4, 6, 7, 4, 3, 8, 5, 3, 2, ...Array<number>(67).fill(0)]]);
    expect(out.warnings.length).toBe(2);
    expect(simple.vocabSize).toBe(9);
    expect(simple.decode([1, 4, 5, 2])).toEqual(["<bos>", "a", "cat", "<eos>"]);
  });

  it("shares truncation and chunking with the CLIP tokenizer", () => {
    const small = new SimpleTokenizer(["a"], { maxLength: 6 });
    expect(small.encode("a a a a a", { longPrompts: "truncate" }).ids).toEqual([[1, 4, 4, 4, 4, 2]]);
    expect(small.encode("a a a a a").ids).toEqual([[1, 4, 4, 4, 4, 2, 1, 4, 2, 0, 0, 0]]);
  });

  it("rejects malformed word lists", () => {
    expect(() => new SimpleTokenizer(["Cat"])).toThrow(/lower-case/);
    expect(() => new SimpleTokenizer(["a", "a"])).toThrow(/twice/);
  });
});
