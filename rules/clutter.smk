# The clutter experiment (shapes only; target `clutter`): is TBKIN's gain over Base the
# removal of irrelevant regions? Each level re-renders the dataset with that many
# distractors per image (the generator's distractors_per_image), extracts its features
# with the main detector, and fine-tunes Base (t0) and one T from the main pretrained
# model, with each seed of clutter.seeds; `tbkin clutter` pairs them by seed.
#   clutter.threshold: null = the best T of the main ablation (read from its paired.csv),
#   so the main ablation runs first.

if config["dataset"] == "shapes":

    use rule generate_shapes as clutter_generate with:
        output:
            marker=f"{CLUTTER_LEVEL}/generate_shapes.json",
            files=[clutter_file(k, s) for s in SPLITS for k in split_files(s)] + [clutter_file(k) for k in refs_files()],
        params:
            layout=lambda wildcards: layout_args(CLUTTER_DATA.format(level=wildcards.level)),
            spec=lambda wildcards: json.dumps(
                {**json.loads(SHAPES_SPEC), "distractors_per_image": [int(wildcards.level)] * 2}, sort_keys=True),
        log: f"{LOGS}/clutter/generate_level{{level}}.log"
        benchmark: f"{BENCH}/clutter/generate_level{{level}}.tsv"

    use rule check_data as clutter_check with:
        input:
            files=lambda wildcards: [p.format(level=wildcards.level) for p in
                                     (clutter_file(k, wildcards.part) for k in split_files(wildcards.part))],
            generated=f"{CLUTTER_LEVEL}/generate_shapes.json",
        output:
            f"{CLUTTER_LEVEL}/checked/{{part}}.json",
        params:
            layout=lambda wildcards: layout_args(CLUTTER_DATA.format(level=wildcards.level)),
            contents=CONTENTS,
            dataset="shapes",
        log: f"{LOGS}/clutter/check_level{{level}}_{{part}}.log"
        benchmark: f"{BENCH}/clutter/check_level{{level}}_{{part}}.tsv"

    use rule extract_features as clutter_extract with:
        input:
            image_list=CLUTTER_IMAGE_LIST,
            weights=detector_input(),
        output:
            f"{CLUTTER_LEVEL}/features/{{split}}-shard{{shard}}.h5",
        # one shard of the level's images, otherwise the main extraction
        params: **params_except(rules.extract_features.rule, num_shards=1, images=clutter_images)
        log: f"{LOGS}/clutter/extract_level{{level}}_{{split}}_{{shard}}.log"
        benchmark: f"{BENCH}/clutter/extract_level{{level}}_{{split}}_{{shard}}.tsv"

    use rule finetune_vqa as clutter_finetune_vqa with:
        input:
            vqa_questions=clutter_file("vqa_questions", "train"),
            vqa_annotations=clutter_file("vqa_annotations", "train"),
            image_list=CLUTTER_IMAGE_LIST.replace("{split}", "train"),
            val_questions=clutter_file("vqa_questions", "val"),
            val_checked=CLUTTER_IMAGE_LIST.replace("{split}", "val"),
            pretrained=PRETRAIN_CKPT,
            train_features=f"{CLUTTER_LEVEL}/features/train-shard0.h5",
            val_features=f"{CLUTTER_LEVEL}/features/val-shard0.h5",
        output:
            predictions=f"{CLUTTER_RUN.replace('{task}', 'vqa')}/predictions.json",
            run=f"{CLUTTER_RUN.replace('{task}', 'vqa')}/run.json",
        params: **rules.ablation_finetune_vqa.rule.params
        threads: 1
        resources: mem_mb=4000, runtime=60, nproc=1
        log: f"{LOGS}/clutter/finetune_vqa-level{{level}}-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/clutter/finetune_vqa-level{{level}}-{{setting}}-seed{{seed}}.tsv"

    use rule finetune_rec as clutter_finetune_rec with:
        input:
            refs=clutter_file("refs"),
            refs_instances=clutter_file("refs_instances"),
            refs_checked=CLUTTER_IMAGE_LIST.replace("{split}", "train"),
            pretrained=PRETRAIN_CKPT,
            features=f"{CLUTTER_LEVEL}/features/train-shard0.h5",
        output:
            predictions=f"{CLUTTER_RUN.replace('{task}', 'rec')}/predictions.json",
            run=f"{CLUTTER_RUN.replace('{task}', 'rec')}/run.json",
        params: **rules.ablation_finetune_rec.rule.params
        threads: 1
        resources: mem_mb=4000, runtime=60, nproc=1
        log: f"{LOGS}/clutter/finetune_rec-level{{level}}-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/clutter/finetune_rec-level{{level}}-{{setting}}-seed{{seed}}.tsv"

    use rule eval_vqa as clutter_eval_vqa with:
        input:
            questions=clutter_file("vqa_questions", "val"),
            annotations=clutter_file("vqa_annotations", "val"),
            train_questions=clutter_file("vqa_questions", "train"),
            train_annotations=clutter_file("vqa_annotations", "train"),
            predictions=f"{CLUTTER_RUN.replace('{task}', 'vqa')}/predictions.json",
            run=f"{CLUTTER_RUN.replace('{task}', 'vqa')}/run.json",
        output: f"{CLUTTER_RUN.replace('{task}', 'vqa')}/eval.json"
        log: f"{LOGS}/clutter/eval_vqa-level{{level}}-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/clutter/eval_vqa-level{{level}}-{{setting}}-seed{{seed}}.tsv"

    use rule eval_rec as clutter_eval_rec with:
        input:
            refs=clutter_file("refs"),
            refs_instances=clutter_file("refs_instances"),
            predictions=f"{CLUTTER_RUN.replace('{task}', 'rec')}/predictions.json",
            run=f"{CLUTTER_RUN.replace('{task}', 'rec')}/run.json",
        output: f"{CLUTTER_RUN.replace('{task}', 'rec')}/eval.json"
        log: f"{LOGS}/clutter/eval_rec-level{{level}}-{{setting}}-seed{{seed}}.log"
        benchmark: f"{BENCH}/clutter/eval_rec-level{{level}}-{{setting}}-seed{{seed}}.tsv"

    rule clutter:
        """clutter.csv (level, setting, seed, VQA overall, REC val) and TBKIN - Base against clutter."""
        input:
            clutter_evals,
        output:
            csv=CLUTTER_CSV,
            png=report(CLUTTER_PNG, caption="../workflow/report/clutter.rst", category="6. Clutter"),
        threads: 1
        resources: mem_mb=2000, runtime=10
        log: f"{LOGS}/clutter/clutter.log"
        benchmark: f"{BENCH}/clutter/clutter.tsv"
        conda: "../envs/tbkin.yaml"
        shell:
            "tbkin clutter --evals {input:q} --csv {output.csv:q} --png {output.png:q} > {log:q} 2>&1"
