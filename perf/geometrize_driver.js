// Run geometrize (npm "geometrizejs") on one raw RGBA image; used by perf/fit_vs_geometrize.py.
//
//   node perf/geometrize_driver.js IN.rgba WIDTH HEIGHT SHAPES OUT.rgba [CANDIDATES MUTATIONS ALPHA]
//
// IN.rgba: WIDTH * HEIGHT * 4 bytes (row-major RGBA, alpha 255). Writes the result, same layout, to
// OUT.rgba. Settings as the geometrize apps use them: triangles only, each step keeps the best of
// CANDIDATES random shapes hill-climbed with MUTATIONS mutations (default 50 x 100), shape alpha
// ALPHA (default 128), starting from the image's average color. geometrizejs is resolved from the
// working directory's node_modules or NODE_PATH (run `npm install geometrizejs` there first).
"use strict";

const fs = require("fs");
const path = require("path");

function loadGeometrize() {
  const bases = [process.cwd(), ...(process.env.NODE_PATH || "").split(path.delimiter)];
  for (const base of bases.filter(Boolean)) {
    try {
      return require(require.resolve("geometrizejs", { paths: [base] }));
    } catch (err) {
      // try the next place
    }
  }
  return require("geometrizejs");
}

function main(argv) {
  if (argv.length < 5) {
    process.stderr.write(
      "usage: node geometrize_driver.js IN.rgba WIDTH HEIGHT SHAPES OUT.rgba " +
        "[CANDIDATES MUTATIONS ALPHA]\n",
    );
    return 2;
  }
  const [input, w, h, n, output] = argv;
  const width = parseInt(w, 10);
  const height = parseInt(h, 10);
  const shapes = parseInt(n, 10);
  const candidates = parseInt(argv[5] || "50", 10);
  const mutations = parseInt(argv[6] || "100", 10);
  const alpha = parseInt(argv[7] || "128", 10);
  const { Bitmap, ImageRunner, ShapeTypes } = loadGeometrize();

  const bytes = fs.readFileSync(input);
  if (bytes.length !== width * height * 4) {
    process.stderr.write(`${input}: expected ${width * height * 4} bytes, got ${bytes.length}\n`);
    return 2;
  }
  // The geometrize apps start from the average color (geometrize's Util.getAverageImageColor).
  let r = 0;
  let g = 0;
  let b = 0;
  for (let i = 0; i < bytes.length; i += 4) {
    r += bytes[i];
    g += bytes[i + 1];
    b += bytes[i + 2];
  }
  const size = width * height;
  const background =
    (((r / size) | 0) << 24) + (((g / size) | 0) << 16) + (((b / size) | 0) << 8) + 255;

  const bitmap = Bitmap.createFromByteArray(width, height, bytes);
  const runner = new ImageRunner(bitmap, background);
  const options = {
    shapeTypes: [ShapeTypes.TRIANGLE],
    candidateShapesPerStep: candidates,
    shapeMutationsPerStep: mutations,
    alpha: alpha,
  };
  for (let i = 0; i < shapes; i++) {
    runner.step(options);
  }
  fs.writeFileSync(output, Buffer.from(runner.getImageData().getBytes().b));
  return 0;
}

process.exitCode = main(process.argv.slice(2));
