// The companion's version, from package.json (bundled into dist/perimeter.js by esbuild).
import pkg from '../package.json';

export const VERSION: string = pkg.version;
