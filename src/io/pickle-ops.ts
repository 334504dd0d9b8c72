/**
 * Pickle opcodes (protocols 0–5), named as in Python's `pickle.py`, shared by the safe reader and
 * the writer in `pickle.ts` (and usable by tools that build or take apart pickles, like the fuzzer).
 */
export const OP = {
  // protocol 0–1
  MARK: 0x28, // (
  STOP: 0x2e, // .
  POP: 0x30, // 0
  POP_MARK: 0x31, // 1
  DUP: 0x32, // 2
  FLOAT: 0x46, // F: decimal text
  INT: 0x49, // I: decimal text ("00"/"01" are booleans)
  BININT: 0x4a, // J: int32
  BININT1: 0x4b, // K: uint8
  LONG: 0x4c, // L: decimal text
  BININT2: 0x4d, // M: uint16
  NONE: 0x4e, // N
  PERSID: 0x50, // P: persistent id as text
  BINPERSID: 0x51, // Q: persistent id from the stack
  REDUCE: 0x52, // R: call
  STRING: 0x53, // S: quoted text
  BINSTRING: 0x54, // T: int32 length
  SHORT_BINSTRING: 0x55, // U: uint8 length
  UNICODE: 0x56, // V: raw-unicode-escape text
  BINUNICODE: 0x58, // X: uint32 length, UTF-8
  APPEND: 0x61, // a
  BUILD: 0x62, // b: __setstate__
  GLOBAL: 0x63, // c: "module\nname\n"
  DICT: 0x64, // d
  EMPTY_DICT: 0x7d, // }
  APPENDS: 0x65, // e
  GET: 0x67, // g: text index
  BINGET: 0x68, // h: uint8 index
  INST: 0x69, // i: "module\nname\n" + MARKed args
  LONG_BINGET: 0x6a, // j: uint32 index
  LIST: 0x6c, // l
  EMPTY_LIST: 0x5d, // ]
  OBJ: 0x6f, // o
  PUT: 0x70, // p: text index
  BINPUT: 0x71, // q: uint8 index
  LONG_BINPUT: 0x72, // r: uint32 index
  SETITEM: 0x73, // s
  TUPLE: 0x74, // t
  EMPTY_TUPLE: 0x29, // )
  SETITEMS: 0x75, // u
  BINFLOAT: 0x47, // G: float64 big-endian
  // protocol 2
  PROTO: 0x80,
  NEWOBJ: 0x81,
  EXT1: 0x82,
  EXT2: 0x83,
  EXT4: 0x84,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  LONG1: 0x8a, // uint8 length, little-endian two's complement
  LONG4: 0x8b, // int32 length
  // protocol 3
  BINBYTES: 0x42, // B: uint32 length
  SHORT_BINBYTES: 0x43, // C: uint8 length
  // protocol 4
  SHORT_BINUNICODE: 0x8c,
  BINUNICODE8: 0x8d,
  BINBYTES8: 0x8e,
  EMPTY_SET: 0x8f,
  ADDITEMS: 0x90,
  FROZENSET: 0x91,
  NEWOBJ_EX: 0x92,
  STACK_GLOBAL: 0x93,
  MEMOIZE: 0x94,
  FRAME: 0x95,
  // protocol 5
  BYTEARRAY8: 0x96,
  NEXT_BUFFER: 0x97,
  READONLY_BUFFER: 0x98,
} as const;

/** A pickle opcode name. */
export type OpName = keyof typeof OP;
