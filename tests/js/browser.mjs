// What the browser checks share: Debian's Chromium, headless, through playwright-core
// (scripts/deps.sh --test installs both into target/tools; no browser download).
//
// check(body, expected) opens a page, lets body(page, seen) drive it and fill `seen`,
// fails on any error the page reports (minus those `expected` says), prints `seen` as one
// JSON line and closes the browser.

import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.resolve("target/tools/node_modules/"));
const { chromium } = require("playwright-core");

export async function check(body, expected = () => false) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // As root (CI), Chromium's sandbox needs user namespaces it may not have.
    args: ["--no-sandbox"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => {
      if (m.type() === "error" && !expected(m.text())) errors.push(m.text());
    });
    const seen = {};
    await body(page, seen);
    if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
}
