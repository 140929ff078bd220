// ESM entry: the CommonJS module itself (one instance whether imported or required).
import sticky from './index.js';

export default sticky;
export const { listen, primary, prometheus, setupMaster, setupWorker } = sticky;
