# Rules for the finetune stage.
