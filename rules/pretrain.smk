# Rules for the pretrain stage.
