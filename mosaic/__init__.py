"""`python -m mosaic <step>`: the Mosaic memory pipeline (seed 003). Each step is a module with main(argv)."""
STEPS = {
    "canaries": "sample member and non-member reference canaries from a model",
    "variations": "fuzzy duplicates of canaries (mlm, mlm_random, random, insertion, shuffle, paraphrase)",
    "inject": "insert canaries / fuzzy duplicates into books, recording every position",
    "train": "fine-tune the target model on the injected corpus, logging the loss-attack AUC",
    "mia": "membership inference attacks: AUC and TPR at low FPR per canary group, ROC plot",
    "rho": "how many exact duplicates a fuzzy duplicate is worth (the paper's rho)",
    "scan": "near-duplicate scan of a tokenized corpus on Dask (suffix arrays, Hamming / Levenshtein)",
    "plot": "the paper's main figures from the JSON results",
    "sweep": "one target per setting and seed (inject, train, mia), AUCs over seeds, rho",
}
