// Reads numpy's .npy format (numpy.save): versions 1 to 3, C order, numbers and booleans.
// Returns { shape, data } with data as plain numbers (booleans for bool), ready for a JSON
// tensor; refuses, with the reason, what it cannot read exactly.

const TYPES = {
  b1: [1, (v, o) => v.getUint8(o) !== 0],
  u1: [1, (v, o) => v.getUint8(o)],
  i1: [1, (v, o) => v.getInt8(o)],
  u2: [2, (v, o, le) => v.getUint16(o, le)],
  i2: [2, (v, o, le) => v.getInt16(o, le)],
  u4: [4, (v, o, le) => v.getUint32(o, le)],
  i4: [4, (v, o, le) => v.getInt32(o, le)],
  u8: [8, (v, o, le) => exact(v.getBigUint64(o, le))],
  i8: [8, (v, o, le) => exact(v.getBigInt64(o, le))],
  f2: [2, (v, o, le) => half(v.getUint16(o, le))],
  f4: [4, (v, o, le) => v.getFloat32(o, le)],
  f8: [8, (v, o, le) => v.getFloat64(o, le)],
};

function exact(big) {
  const n = Number(big);
  if (!Number.isSafeInteger(n)) throw new Error(`the value ${big} is too large for a JSON number`);
  return n;
}

function half(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

export function fromNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || !magic.every((b, i) => bytes[i] === b)) throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  if (start + headerLength > bytes.length) throw new Error("the header runs past the end of the file");
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([<>|=])([a-z]\d+)'/.exec(header);
  if (!descr) throw new Error(`unsupported dtype in ${header.trim()}`);
  if (/'fortran_order':\s*True/.test(header)) throw new Error("the array is in Fortran order; save it in C order");
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!shapeText) throw new Error("no shape in the header");
  const shape = shapeText[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const type = TYPES[descr[2]];
  if (!type) throw new Error(`dtype ${descr[2]} is not supported (numbers and booleans are)`);
  const [size, read] = type;
  const little = descr[1] !== ">";
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLength;
  if (offset + count * size > bytes.length) throw new Error(`shape (${shape}) needs ${count * size} bytes of data, the file has ${bytes.length - offset}`);
  const data = new Array(count);
  for (let i = 0; i < count; i++) data[i] = read(view, offset + i * size, little);
  return { shape, data };
}
